//! The slot limiter's Redis scripts (`lua/slots_*.lua`), each built once by the script registry
//! (`projector_redis::lua`), and their replies as small structs. Every script includes
//! `lua/lib/slots.lua` (named keys and shared helpers) and takes only the keys it names in its
//! `local SLOT_KEYS = {…}` line, which [`SlotScript`] reads from the script itself, so the Lua
//! and the Rust side cannot disagree on them.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, Value};

use projector_redis::keys::SlotKeys;
use redis::ScriptInvocation;

/// A slot script with the names of the keys it takes, in order.
pub(super) struct SlotScript {
    script: Script,
    keys: Vec<String>,
}

impl SlotScript {
    fn new(body: &str) -> Self {
        SlotScript { script: projector_redis::lua::script(body), keys: key_names(body) }
    }

    /// An invocation with this script's keys of `slots`; add the arguments and call it.
    pub(super) fn on(&self, slots: &SlotKeys) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        for name in &self.keys {
            invocation.key(slots.named(name));
        }
        invocation
    }
}

/// The names in a script's `local SLOT_KEYS = {'limit', 'leases'}` line, in order.
fn key_names(body: &str) -> Vec<String> {
    let Some(line) = body.lines().find(|l| l.starts_with("local SLOT_KEYS = {")) else { return Vec::new() };
    let inside = line.trim_start_matches("local SLOT_KEYS = {").trim_end().trim_end_matches('}');
    inside.split(',').map(|n| n.trim().trim_matches('\'').to_owned()).filter(|n| !n.is_empty()).collect()
}

pub(super) static ACQUIRE: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_acquire.lua")));
pub(super) static CANCEL: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_cancel.lua")));
pub(super) static RELEASE: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_release.lua")));
pub(super) static RENEW: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_renew.lua")));
pub(super) static SET_LIMIT: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_set_limit.lua")));
pub(super) static RESET: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_reset.lua")));
pub(super) static OCCUPANCY: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_occupancy.lua")));
pub(super) static ADAPTIVE: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_adaptive.lua")));
pub(super) static PAUSE: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_pause.lua")));
pub(super) static SERVICE: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_service.lua")));
pub(super) static HISTORY: LazyLock<SlotScript> = LazyLock::new(|| SlotScript::new(include_str!("../../../../lua/slots_history.lua")));

/// `slots_acquire`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Acquired {
    /// The fencing token when granted, else the caller's position in the queue.
    pub granted: Option<u64>,
    pub queue_position: u64,
    pub limit: u32,
    /// Expired leases dropped by this call.
    pub reclaimed: u64,
}

impl FromRedisValue for Acquired {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (granted, value, _in_use, limit, reclaimed): (u8, u64, u32, u32, u64) = FromRedisValue::from_redis_value(v)?;
        Ok(Acquired { granted: (granted == 1).then_some(value), queue_position: if granted == 1 { 0 } else { value }, limit, reclaimed })
    }
}

/// `slots_cancel`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cancelled {
    /// A slot handed over in the same instant, taken rather than lost: its fencing token.
    pub granted: Option<u64>,
    pub in_use: u32,
    pub limit: u32,
    pub waiters_left: u32,
}

impl FromRedisValue for Cancelled {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (granted, token, in_use, limit, waiters_left): (u8, u64, u32, u32, u32) = FromRedisValue::from_redis_value(v)?;
        Ok(Cancelled { granted: (granted == 1).then_some(token), in_use, limit, waiters_left })
    }
}

/// `slots_release`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Released {
    /// False when the lease had already gone (expired, or reset by an operator).
    pub removed: bool,
    pub in_use: u32,
    pub limit: u32,
    pub reclaimed: u64,
}

impl FromRedisValue for Released {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (removed, in_use, limit, reclaimed): (u8, u32, u32, u64) = FromRedisValue::from_redis_value(v)?;
        Ok(Released { removed: removed == 1, in_use, limit, reclaimed })
    }
}

/// `slots_occupancy`'s reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occupancy {
    /// Live leases on Redis time.
    pub in_use: u32,
    /// The stored limit; `None` before any worker or operator stored one.
    pub limit: Option<u32>,
    /// The limit in force: the stored limit times the adaptive multiplier.
    pub in_force: Option<u32>,
    /// The fleet's adaptive multiplier (1 when adaptation never ran or was reset).
    pub multiplier: f64,
    /// The query service's bound on the limit (`slots_service`): its cap while its latest numbers
    /// hold, else its remembered room (`slots.service_memory`).
    pub service_cap: Option<u32>,
    /// Other callers' share of the referrer at the service, as worked out at the answers
    /// themselves (`slots_service`), for a minute after the last answer; `None` without one.
    pub service_others: Option<u32>,
}

impl Occupancy {
    /// What sets the limit in force: the service's cap, the adaptive multiplier, an operator's
    /// stored limit (`configured` is `slots.limit`), or the configuration. The label of
    /// `spike_projection_slot_limit{source}`.
    pub fn source(&self, configured: u32) -> &'static str {
        let (Some(stored), Some(in_force)) = (self.limit, self.in_force) else { return "config" };
        let scaled = ((f64::from(stored) * self.multiplier + 1e-9).floor() as u32).max(1);
        if self.service_cap.is_some_and(|cap| cap < scaled && in_force == cap.max(1)) {
            "service"
        } else if scaled < stored {
            "adaptive"
        } else if stored != configured {
            "stored"
        } else {
            "config"
        }
    }
}

impl FromRedisValue for Occupancy {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (in_use, limit, in_force, multiplier, service_cap, service_others): (
            u32,
            Option<u32>,
            Option<u32>,
            String,
            Option<u32>,
            Option<u32>,
        ) = FromRedisValue::from_redis_value(v)?;
        Ok(Occupancy { in_use, limit, in_force, multiplier: multiplier.parse().unwrap_or(1.0), service_cap, service_others })
    }
}

/// `slots_service`'s reply: the cap the service's numbers set, and what it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCap {
    pub cap: u32,
    /// The service's count beyond the fleet's live leases: other callers of the referrer.
    pub others: u32,
    pub in_use: u32,
    pub limit_in_force: u32,
}

impl FromRedisValue for ServiceCap {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (cap, others, in_use, limit_in_force): (u32, u32, u32, u32) = FromRedisValue::from_redis_value(v)?;
        Ok(ServiceCap { cap, others, in_use, limit_in_force })
    }
}

/// `slots_adaptive`'s reply: the multiplier after this report, and the window it closed if any.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveReport {
    pub multiplier: f64,
    /// This report closed the fleet's window (exactly one report per window does).
    pub closed: bool,
    /// This report took the window's 429 ratio over the bound and cut the multiplier at once,
    /// before the window's end (at most once per window).
    pub cut_early: bool,
    /// `up`, `down`, `hold`; `None` when no window closed or it had too few answers to decide.
    pub direction: Option<&'static str>,
    /// What moved it: `429`, `throttle`, `demand`; empty when nothing did.
    pub signal: String,
    /// The closed window's answers: ok (throttled included), 429, throttled.
    pub window: (u64, u64, u64),
    /// The slot limit in force after this report.
    pub limit_in_force: u32,
}

impl FromRedisValue for AdaptiveReport {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (multiplier, closed, direction, signal, ok, r429, throttled, limit_in_force): (String, u8, i8, String, u64, u64, u64, u32) =
            FromRedisValue::from_redis_value(v)?;
        let direction = match direction {
            1 => Some("up"),
            -1 => Some("down"),
            2 => Some("hold"),
            _ => None,
        };
        Ok(AdaptiveReport {
            multiplier: multiplier.parse().unwrap_or(1.0),
            closed: closed == 1,
            cut_early: closed == 2,
            direction,
            signal,
            window: (ok, r429, throttled),
            limit_in_force,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["limit", "leases", "holders", "fence", "seq", "queue", "waiter_deadlines", "waiting", "adaptive", "history"];

    #[test]
    fn each_script_takes_only_the_keys_it_names_and_every_name_is_a_slot_key() {
        let scripts =
            [&*ACQUIRE, &*CANCEL, &*RELEASE, &*RENEW, &*SET_LIMIT, &*RESET, &*OCCUPANCY, &*ADAPTIVE, &*PAUSE, &*SERVICE, &*HISTORY];
        for s in scripts {
            assert!(!s.keys.is_empty(), "every slot script names its keys");
            assert!(s.keys.iter().all(|k| KNOWN.contains(&k.as_str())), "{:?}", s.keys);
        }
        assert_eq!(ACQUIRE.keys.len(), 9, "acquiring may reclaim, grant and queue: every key but the history");
        assert_eq!(PAUSE.keys, ["adaptive"], "a pause touches the adaptive hash only");
        assert_eq!(RENEW.keys, ["leases", "holders"]);
        let invocation_keys = HISTORY.keys.iter().map(|n| SlotKeys::new("x").named(n)).collect::<Vec<_>>();
        assert_eq!(invocation_keys.last().map(String::as_str), Some("{projector:slots:x}:history"));
    }

    #[test]
    fn key_names_are_read_from_the_scripts_own_line() {
        assert_eq!(key_names("-- x\nlocal SLOT_KEYS = {'limit', 'leases'}\n--- @include \"slots\"\n"), ["limit", "leases"]);
        assert!(key_names("return 1").is_empty());
    }
}
