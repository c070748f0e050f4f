-- slots_occupancy: read-only; the gauges report what Redis holds, never a count a process
-- remembers.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: none
-- Returns: {live leases on Redis time, the stored limit or nil, the limit in force (stored limit
--          x adaptive multiplier, under the service's cap) or nil, the multiplier (string),
--          the service's bound while it holds (its cap, else its remembered room) or nil}
local SLOT_KEYS = {'limit', 'leases', 'adaptive'}
--- @include "slots"
local now = now_ms()
local stored = redis.call('GET', limit_key)
local in_force = stored and effective(tonumber(stored)) or false
local a = redis.call('HMGET', adaptive, 'multiplier', 'service_cap', 'service_until_ms',
  'service_room', 'service_room_until_ms')
return {redis.call('ZCOUNT', leases, '(' .. now, '+inf'), stored, in_force, a[1] or '1', service_bound(a, 2, now) or false}
