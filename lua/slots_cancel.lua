-- slots_cancel: leaves the queue at the end of a wait; a slot handed over in the same instant is
-- taken, not lost.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: 1 id (waiter id), 2 lease_ms (for a slot collected now), 3 wake_prefix
-- Returns: {granted (0|1), token (0 if not granted), in_use, limit (0 if none stored), waiters_left}
local SLOT_KEYS = {'limit', 'leases', 'holders', 'fence', 'seq', 'queue', 'waiter_deadlines', 'waiting', 'adaptive'}
--- @include "slots"
local id, lease_ms, wake_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
redis.call('ZREM', queue, id)
redis.call('ZREM', deadlines, id)
redis.call('HDEL', waiting, id)
local token = collect(id, lease_ms, now, wake_prefix)
redis.call('DEL', wake_prefix .. id)
return {token and 1 or 0, token or 0, redis.call('ZCARD', leases), tonumber(redis.call('GET', limit_key) or 0), redis.call('ZCARD', queue)}
