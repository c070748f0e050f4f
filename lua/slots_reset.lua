-- slots_reset: drops every lease and waiter (after an incident); keeps the limit and the fence,
-- so fencing tokens keep growing.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: none
-- Returns: how many leases were dropped.
local SLOT_KEYS = {'limit', 'leases', 'holders', 'fence', 'seq', 'queue', 'waiter_deadlines', 'waiting', 'adaptive'}
--- @include "slots"
local dropped = redis.call('ZCARD', leases)
redis.call('DEL', leases, holders, queue, deadlines, waiting)
return dropped
