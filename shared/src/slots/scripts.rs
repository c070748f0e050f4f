//! The slot limiter's Redis scripts (`lua/slots_*.lua`), each built once, and their replies as
//! small structs. Every script is `lua/slots_prelude.lua` (named keys and shared helpers) followed
//! by its own body, and takes the same eight keys (`SlotKeys::script_keys`).

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, Value};

const PRELUDE: &str = include_str!("../../../lua/slots_prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_acquire.lua")));
pub(super) static CANCEL: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_cancel.lua")));
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_release.lua")));
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_renew.lua")));
pub(super) static SET_LIMIT: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_set_limit.lua")));
pub(super) static RESET: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_reset.lua")));
pub(super) static OCCUPANCY: LazyLock<Script> = LazyLock::new(|| script(include_str!("../../../lua/slots_occupancy.lua")));

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Occupancy {
    /// Live leases on Redis time.
    pub in_use: u32,
    /// `None` before any worker or operator stored a limit.
    pub limit: Option<u32>,
}

impl FromRedisValue for Occupancy {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (in_use, limit): (u32, Option<u32>) = FromRedisValue::from_redis_value(v)?;
        Ok(Occupancy { in_use, limit })
    }
}
