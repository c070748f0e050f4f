-- slots_renew: extends a live lease to at least lease_ms from now. Never shortens one: a lease
-- taken for a query keeps its floor (grant + query.max_duration).
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: 1 id (lease id), 2 lease_ms
-- Returns: 1 if the lease runs at least lease_ms from now, 0 if it was gone (the holder lost it).
local SLOT_KEYS = {'leases', 'holders'}
--- @include "slots"
local id, lease_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local expiry = redis.call('ZSCORE', leases, id)
if not expiry or tonumber(expiry) <= now then
  redis.call('ZREM', leases, id)
  redis.call('HDEL', holders, id)
  return 0
end
redis.call('ZADD', leases, 'XX', 'GT', now + lease_ms, id)
if touch_due(leases) then touch(leases, holders) end
return 1
