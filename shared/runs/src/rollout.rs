//! The per-org rollout flag `organizations:spike-projection-rate-limit`: which organizations take
//! the limited path (slot first) and which the legacy one. Pure evaluation plus its Redis storage,
//! so the scheduler's dry-run and every worker evaluate it the same way.

use std::collections::BTreeSet;

use redis::aio::ConnectionLike;

use crate::error::Error;
use projector_core::ids::OrgId;
use projector_redis::keys;

/// The flag's name, as the billing service's rollout plan calls it.
pub const RATE_LIMIT_FLAG: &str = "organizations:spike-projection-rate-limit";

/// The flag as operators set it. Every field unset means the safe default: everyone limited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    /// `Some(false)` sends everyone not on the allow list down the legacy path.
    pub enabled: Option<bool>,
    /// Share of organizations (0–100) on the limited path; unset means 100.
    pub percentage: Option<u8>,
    /// Always limited.
    pub allow: BTreeSet<OrgId>,
    /// Always legacy: the explicit exclusions the legacy path exists for.
    pub deny: BTreeSet<OrgId>,
}

/// The path one org's job takes, with the rule that chose it (for the org's trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Slot first: the protected path.
    Limited(String),
    /// No slot, as before the rollout: only for orgs the flag leaves out.
    Legacy(String),
}

impl Route {
    pub fn is_limited(&self) -> bool {
        matches!(self, Route::Limited(_))
    }

    /// The rule that chose the path ("deny list", "bucket 12 < 50%", …).
    pub fn why(&self) -> &str {
        match self {
            Route::Limited(why) | Route::Legacy(why) => why,
        }
    }
}

impl Rollout {
    /// Whether `org` takes the limited path. Deny beats allow; allow beats everything else.
    pub fn is_limited(&self, org: OrgId) -> bool {
        self.route(org).is_limited()
    }

    /// The path `org` takes, and why (for the org's trail: `projectorctl explain`).
    pub fn route(&self, org: OrgId) -> Route {
        if self.deny.contains(&org) {
            return Route::Legacy("deny list".to_owned());
        }
        if self.allow.contains(&org) {
            return Route::Limited("allow list".to_owned());
        }
        if self.enabled == Some(false) {
            return Route::Legacy("flag off".to_owned());
        }
        // Short: this lands in every org's trail, kept per run.
        let bucket = bucket(RATE_LIMIT_FLAG, org);
        match self.percentage {
            None if *self == Rollout::default() => Route::Limited("flag never set".to_owned()),
            None => Route::Limited("percentage 100".to_owned()),
            Some(p) if bucket < u32::from(p) => Route::Limited(format!("bucket {bucket} < {p}%")),
            Some(p) => Route::Legacy(format!("bucket {bucket} >= {p}%")),
        }
    }

    /// Reads the flag; a missing key is the default (everyone limited).
    pub async fn load(conn: &mut impl ConnectionLike) -> Result<Self, Error> {
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::flag(RATE_LIMIT_FLAG))
            .query_async(conn)
            .await
            .map_err(Error::redis(format!("reading the rollout flag {RATE_LIMIT_FLAG}")))?;
        Ok(Rollout::from_fields(|name| fields.get(name).cloned()))
    }

    /// The flag from its stored fields (`enabled`, `percentage`, `allow`, `deny`), however
    /// stored: a Redis hash, or a SQLite setting.
    pub fn from_fields(field: impl Fn(&str) -> Option<String>) -> Self {
        let ids = |name: &str| -> BTreeSet<OrgId> {
            field(name).map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).map(OrgId).collect()).unwrap_or_default()
        };
        Rollout {
            enabled: field("enabled").map(|v| v == "true" || v == "1"),
            percentage: field("percentage").and_then(|v| v.parse().ok()).map(|p: u8| p.min(100)),
            allow: ids("allow"),
            deny: ids("deny"),
        }
    }

    /// The flag's fields as stored; unset ones are left out.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let join = |set: &BTreeSet<OrgId>| set.iter().map(|o| o.0.to_string()).collect::<Vec<_>>().join(",");
        let mut fields = Vec::new();
        if let Some(e) = self.enabled {
            fields.push(("enabled", e.to_string()));
        }
        if let Some(p) = self.percentage {
            fields.push(("percentage", p.to_string()));
        }
        fields.push(("allow", join(&self.allow)));
        fields.push(("deny", join(&self.deny)));
        fields
    }

    /// Writes the whole flag. The key has no TTL: it is configuration, not state.
    pub async fn save(&self, conn: &mut impl ConnectionLike) -> Result<(), Error> {
        let key = keys::flag(RATE_LIMIT_FLAG);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key);
        for (field, value) in self.fields() {
            pipe.hset(&key, field, value);
        }
        pipe.query_async::<()>(conn).await.map_err(Error::redis(format!("writing the rollout flag {RATE_LIMIT_FLAG}")))
    }
}

/// Stable bucket 0..100 of an org under a flag (FNV-1a of "flag:org"): raising the percentage
/// only adds organizations, it never reshuffles those already in.
pub fn bucket(flag: &str, org: OrgId) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in flag.bytes().chain(std::iter::once(b':')).chain(org.0.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_means_everyone_limited() {
        let r = Rollout::default();
        assert!((1..=1_000).all(|o| r.is_limited(OrgId(o))));
    }

    #[test]
    fn raising_the_percentage_keeps_everyone_already_in() {
        let at = |p: u8| -> BTreeSet<u64> {
            let r = Rollout { percentage: Some(p), ..Rollout::default() };
            (1..=10_000).filter(|o| r.is_limited(OrgId(*o))).collect()
        };
        let (ten, twenty) = (at(10), at(20));
        assert!(ten.is_subset(&twenty));
        // Roughly the asked share, not all or nothing.
        assert!((800..1_200).contains(&ten.len()), "{}", ten.len());
        assert!((1_800..2_200).contains(&twenty.len()), "{}", twenty.len());
        assert!(at(0).is_empty());
    }

    #[test]
    fn deny_beats_allow_and_allow_beats_disabled() {
        let r = Rollout { enabled: Some(false), allow: [OrgId(1), OrgId(2)].into(), deny: [OrgId(2)].into(), ..Rollout::default() };
        assert!(r.is_limited(OrgId(1)));
        assert!(!r.is_limited(OrgId(2)));
        assert!(!r.is_limited(OrgId(3)));
        assert_eq!(r.route(OrgId(2)), Route::Legacy("deny list".to_owned()), "the trail names the rule that decided");
        assert_eq!(r.route(OrgId(1)).why(), "allow list");
        assert_eq!(r.route(OrgId(3)).why(), "flag off");
        assert_eq!(Rollout::default().route(OrgId(3)), Route::Limited("flag never set".to_owned()));
        let half = Rollout { percentage: Some(50), ..Rollout::default() };
        let route = half.route(OrgId(3));
        assert_eq!(route.why().contains('<'), route.is_limited(), "{route:?}");
    }
}
