-- slots_set_limit: sets the limit for every process at once. Lowering it interrupts no holder;
-- raising it hands free slots to waiters now.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: 1 new_limit, 2 reserve_ms, 3 wake_prefix
-- Returns: {in_use, limit}
local SLOT_KEYS = {'limit', 'leases', 'holders', 'fence', 'seq', 'queue', 'waiter_deadlines', 'waiting', 'adaptive'}
--- @include "slots"
local new_limit, reserve_ms, wake_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
redis.call('SET', limit_key, new_limit)
local _, waiters = reclaim(now)
local in_use = hand_off(now, effective(new_limit), reserve_ms, wake_prefix, redis.call('ZCARD', leases), waiters)
touch(limit_key)
return {in_use, new_limit}
