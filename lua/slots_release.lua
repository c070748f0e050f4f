-- slots_release: gives a lease back and hands free slots to waiters in arrival order.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: 1 id (lease id), 2 default_limit, 3 reserve_ms, 4 wake_prefix
-- Returns: {removed (0|1; 0 if the lease had already gone), in_use, limit, reclaimed}
local SLOT_KEYS = {'limit', 'leases', 'holders', 'fence', 'seq', 'queue', 'waiter_deadlines', 'waiting', 'adaptive'}
--- @include "slots"
local id, default_limit, reserve_ms, wake_prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local removed = redis.call('ZREM', leases, id)
redis.call('HDEL', holders, id)
local reclaimed, waiters = reclaim(now)
local in_use = redis.call('ZCARD', leases)
local limit = limit_of(default_limit)
in_use = hand_off(now, limit, reserve_ms, wake_prefix, in_use, waiters)
return {removed, in_use, limit, reclaimed}
