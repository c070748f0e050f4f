-- slots_history: appends one sample of the fleet's slots to a bounded list, at most one per
-- `every_ms` of Redis time, whichever worker calls first: every worker samples on its gauge
-- round, and the bucket check keeps one sample per period however many workers there are. The
-- list keeps the last `keep` samples (an hour at the default spacing), so it never grows.
-- A sample is "at_ms in_use limit_in_force service_used": the live leases (or, while the
-- service's numbers are fresh, the most leases seen at an answer this period), the limit in force
-- (-1 before any limit is stored), and the query service's own count for the referrer from its
-- latest answer (-1 when no answer came within the last two periods: a stale count is no count).
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua); history is the list of samples
-- ARGV: 1 every_ms, 2 keep
-- Returns: 1 when this call appended a sample, 0 when the period already had one
local SLOT_KEYS = {'limit', 'leases', 'adaptive', 'history'}
--- @include "slots"
local every_ms, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local last = redis.call('LINDEX', history, -1)
if last then
  local at = tonumber(string.match(last, '^(%d+)'))
  if at and math.floor(at / every_ms) >= math.floor(now / every_ms) then return 0 end
end
local in_use = redis.call('ZCOUNT', leases, '(' .. now, '+inf')
local stored = redis.call('GET', limit_key)
local in_force = stored and effective(tonumber(stored)) or -1
local s = redis.call('HMGET', adaptive, 'service_quota_used', 'service_heard_ms', 'service_peak_in_use')
local used = -1
if s[1] and now - tonumber(s[2] or '0') <= 2 * every_ms then
  used = tonumber(s[1])
  -- The service's count was read at an answer, mid-burst: the leases beside it are the most
  -- seen at an answer this period, so the two lines compare the same moments.
  in_use = math.max(in_use, tonumber(s[3] or '0'))
end
redis.call('HDEL', adaptive, 'service_peak_in_use')
redis.call('RPUSH', history, now .. ' ' .. in_use .. ' ' .. in_force .. ' ' .. used)
redis.call('LTRIM', history, -keep, -1)
-- Kept a little longer than the samples it holds: a fleet that stops leaves no list for good.
redis.call('PEXPIRE', history, every_ms * keep * 2)
return 1
