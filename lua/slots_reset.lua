-- slots_reset: drops every lease and waiter (after an incident); keeps the limit and the fence,
-- so fencing tokens keep growing.
-- KEYS: the nine slot keys (see lib/slots.lua)
-- ARGV: none
-- Returns: how many leases were dropped.
--- @include "slots"
local dropped = redis.call('ZCARD', leases)
redis.call('DEL', leases, holders, queue, deadlines, waiting)
return dropped
