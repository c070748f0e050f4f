-- slots_occupancy: read-only; the gauges report what Redis holds, never a count a process
-- remembers.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: none
-- Returns: {live leases on Redis time, the stored limit or nil, the limit in force (stored limit
--          x adaptive multiplier, under the service's cap) or nil, the multiplier (string),
--          the service's bound while it holds (its cap, else its remembered room) or nil,
--          other callers' share of the referrer at the service or nil}
-- Other callers' share is the one `slots_service` worked out at the answers themselves (the
-- service's count less the fleet's leases of that moment, its smallest over two 5-second
-- windows), for a minute after the last answer: never a count from one moment against leases of
-- another (between two bursts of a run the leases are 0, while the last count was mid-burst).
local SLOT_KEYS = {'limit', 'leases', 'adaptive'}
--- @include "slots"
local now = now_ms()
local stored = redis.call('GET', limit_key)
local in_force = stored and effective(tonumber(stored)) or false
local a = redis.call('HMGET', adaptive, 'multiplier', 'service_cap', 'service_until_ms',
  'service_room', 'service_room_until_ms', 'service_others', 'service_heard_ms')
local others = false
-- Fresh for a minute after the last answer (Snuba's own count window), following or not.
if a[6] and now - tonumber(a[7] or '0') <= 60000 then others = tonumber(a[6]) end
return {redis.call('ZCOUNT', leases, '(' .. now, '+inf'), stored, in_force, a[1] or '1', service_bound(a, 2, now) or false, others}
