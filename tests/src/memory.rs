//! Where a run's Redis memory goes: every key's `MEMORY USAGE`, grouped by kind (the key with its
//! ids blanked out), with how long the kind lives.

use std::collections::BTreeMap;

/// The keys of one kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kind {
    pub keys: u64,
    pub bytes: u64,
    /// The longest remaining TTL among the keys, in ms; `None` when one has no TTL.
    pub longest_ttl_ms: Option<u64>,
}

impl Kind {
    /// Whether the kind (all of it) is still there `ms` from now.
    pub fn outlives(&self, ms: u64) -> bool {
        self.longest_ttl_ms.is_none_or(|ttl| ttl > ms)
    }
}

/// A key's kind: each `:`-separated part that carries an id (a digit, or a 26-character ULID) is
/// replaced by `<id>`, so `projector:projections:42` and `…:43` are one kind.
pub fn kind_of(key: &str) -> String {
    key.split(':')
        .map(|part| {
            let ulid = part.len() == 26 && part.bytes().all(|b| b.is_ascii_alphanumeric());
            if ulid || part.bytes().any(|b| b.is_ascii_digit()) { "<id>" } else { part }
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Every key of the server, by kind. Reads each key's size and TTL: meant for a private server.
pub fn by_kind(conn: &mut redis::Connection) -> anyhow::Result<BTreeMap<String, Kind>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(conn)?;
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).cmd("PTTL").arg(key);
        }
        let answers: Vec<(Option<u64>, i64)> = pipe.query(conn)?;
        for (key, (bytes, ttl)) in chunk.iter().zip(answers) {
            let kind = kinds.entry(kind_of(key)).or_default();
            let first = kind.keys == 0;
            kind.keys += 1;
            kind.bytes += bytes.unwrap_or(0);
            kind.longest_ttl_ms = match (ttl, first, kind.longest_ttl_ms) {
                // -2: expired meanwhile; nothing is left of it.
                (-2, true, _) => Some(0),
                (-2, false, longest) => longest,
                (t, _, _) if t < 0 => None,
                (t, true, _) => Some(t as u64),
                (t, false, longest) => longest.map(|l| l.max(t as u64)),
            };
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_blanked_and_names_kept() {
        assert_eq!(kind_of("projector:projections:42"), "projector:projections:<id>");
        assert_eq!(kind_of("projector:run:run-20261204T0400-ab12:orgs"), "projector:run:<id>:orgs");
        assert_eq!(kind_of("projector:jobs:meta:01KBJZ8W3M6V8T1Q2R3S4T5U6V"), "projector:jobs:meta:<id>");
        assert_eq!(kind_of("projector:jobs:active"), "projector:jobs:active");
    }

    #[test]
    fn a_kind_without_ttl_outlives_everything() {
        let forever = Kind { keys: 1, bytes: 10, longest_ttl_ms: None };
        let hour = Kind { keys: 1, bytes: 10, longest_ttl_ms: Some(3_600_000) };
        assert!(forever.outlives(u64::MAX));
        assert!(hour.outlives(3_599_999) && !hour.outlives(3_600_000));
    }
}
