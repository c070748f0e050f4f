//! The slot limiter's Lua scripts: one round trip each for acquire, cancel, release, renew and set-limit.
//! Each is `slots.lua` (shared helpers) followed by its own body.

use std::sync::LazyLock;

use redis::Script;

const PRELUDE: &str = include_str!("slots.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV: id, info, lease_ms, wait_ms, default_limit, reserve_ms, wake_prefix.
/// Returns {granted(0|1), token_or_position, in_use, limit, reclaimed}. Idempotent by waiter id: a
/// retry after a lost reply finds the lease it was granted and returns it again.
pub(super) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, info, ttl, wait = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local held = redis.call('ZSCORE', KEYS[2], id)
if held and tonumber(held) > now then
  local fields = redis.call('HGET', KEYS[3], id) or ''
  local token = tonumber(string.match(fields, '|(%d+)$') or '0')
  return {1, token, redis.call('ZCARD', KEYS[2]), tonumber(redis.call('GET', KEYS[1]) or ARGV[5]), 0}
end
local reclaimed = reclaim(now)
local limit = limit_of(ARGV[5])
hand_off(now, limit, tonumber(ARGV[6]), ARGV[7])
local token = collect(id, ttl, now, ARGV[7])
if not token and redis.call('ZCARD', KEYS[6]) == 0 and redis.call('ZCARD', KEYS[2]) < limit then
  token = grant(id, info, now + ttl, now)
end
if token then
  return {1, token, redis.call('ZCARD', KEYS[2]), limit, reclaimed}
end
local position
if wait > 0 then
  if not redis.call('ZSCORE', KEYS[6], id) then
    redis.call('ZADD', KEYS[6], redis.call('INCR', KEYS[5]), id)
    redis.call('HSET', KEYS[8], id, info)
  end
  redis.call('ZADD', KEYS[7], now + wait, id)
  touch(5, 6, 7, 8)
  position = redis.call('ZRANK', KEYS[6], id) + 1
else
  position = redis.call('ZCARD', KEYS[6]) + 1
end
return {0, position, redis.call('ZCARD', KEYS[2]), limit, reclaimed}
"#,
    )
});

/// ARGV: id, ttl_ms, wake_prefix. Leaves the queue; a slot handed over meanwhile is kept.
/// Returns {granted(0|1), token, in_use, limit, waiters_left}.
pub(super) static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local now = now_ms()
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
redis.call('HDEL', KEYS[8], id)
local token = collect(id, tonumber(ARGV[2]), now, ARGV[3])
redis.call('DEL', ARGV[3] .. id)
return {token and 1 or 0, token or 0, redis.call('ZCARD', KEYS[2]), tonumber(redis.call('GET', KEYS[1]) or 0), redis.call('ZCARD', KEYS[6])}
"#,
    )
});

/// ARGV: id, default_limit, reserve_ms, wake_prefix. Returns {removed(0|1), in_use, limit, reclaimed}.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local reclaimed = reclaim(now)
local limit = limit_of(ARGV[2])
hand_off(now, limit, tonumber(ARGV[3]), ARGV[4])
return {removed, redis.call('ZCARD', KEYS[2]), limit, reclaimed}
"#,
    )
});

/// ARGV: id, ttl_ms. Returns 1 if the lease runs at least ttl_ms from now, 0 if it is gone (lost).
/// Never shortens a lease: one taken for a query keeps its floor (grant + query.max_duration).
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) <= now then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', 'GT', now + tonumber(ARGV[2]), ARGV[1])
touch(2, 3)
return 1
"#,
    )
});

/// ARGV: new_limit, reserve_ms, wake_prefix. Returns {in_use, limit}. Raising the limit wakes waiters now.
pub(super) static SET_LIMIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
redis.call('SET', KEYS[1], ARGV[1])
reclaim(now)
hand_off(now, tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
touch(1)
return {redis.call('ZCARD', KEYS[2]), tonumber(ARGV[1])}
"#,
    )
});

/// Drops every lease and waiter (the seed's `reset_concurrent_count`); keeps the limit and the fence.
pub(super) static RESET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local n = redis.call('ZCARD', KEYS[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[6], KEYS[7], KEYS[8])
return n
"#,
    )
});

/// KEYS: limit, leases. Returns {live leases on Redis time, limit or nil}. Read-only: the gauges
/// report what Redis holds, never a count a process remembers.
pub(super) static OCCUPANCY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'), redis.call('GET', KEYS[1])}
",
    )
});
