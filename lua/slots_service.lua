-- slots_service: the query service's own numbers for the referrer, from one answer, lower the
-- fleet's limit in force at once: the cap is what the service admits less what other callers
-- hold there less a margin, and, with use_throttle, no more than its throttle point less the
-- same share unless that is under half of the first (then half). Other callers' share is the service's count less the fleet's live leases (this
-- query's included), but the service counted when the query started and the leases are counted
-- now: queries that ended in between (a run draining) inflate it for a moment. So the share used
-- is the smallest seen over this 5-second window and the one just before it: a share that lasts is counted, a
-- blip is not. A refusal (rejected = 1) is no blip: the service is over its limit now, so its
-- share counts at once. An answer to a query that started before the latest refusal tells of
-- the service as it was then: it may lower the cap, never raise it. The cap holds
-- until ttl_ms from now (Redis time); a later answer replaces it, and with no answers it lapses.
-- What the service admits at all (its limit less the margin, and with use_throttle no more than
-- its throttle point) is remembered for memory_ms more: after the cap lapses it still bounds the
-- limit in force, so the next run starts within the service's room instead of learning it from
-- 429s. Every answer refreshes it; with none for memory_ms, the stored limit and the multiplier
-- rule again.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua); the cap lives in the adaptive hash
-- ARGV: 1 quota_used (the service's count, >= 0), 2 rejection_threshold, 3 throttle_threshold
--       (0: unknown), 4 use_throttle (0|1), 5 margin, 6 ttl_ms, 7 default_limit, 8 rejected (0|1:
--       the numbers came with a 429), 9 age_ms (how long ago the answered query was sent),
--       10 memory_ms (how long the service's room is remembered)
-- Returns: {cap, others (the service's count beyond the fleet's leases), in_use (live leases),
--           limit in force}
local SLOT_KEYS = {'limit', 'leases', 'adaptive'}
--- @include "slots"
local used, threshold, throttle = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local use_throttle, margin, ttl_ms, default_limit = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local rejected, age_ms, memory_ms = ARGV[8] == '1', tonumber(ARGV[9] or '0'), tonumber(ARGV[10] or '0')
local now = now_ms()
local in_use = redis.call('ZCOUNT', leases, '(' .. now, '+inf')
local seen = math.max(0, used - in_use)
local WINDOW_MS = 5000
local w = redis.call('HMGET', adaptive, 'service_window_ms', 'service_window_min', 'service_previous_min', 'service_peak_in_use')
local started, current, previous = tonumber(w[1] or '0'), tonumber(w[2]), tonumber(w[3])
if not current or now - started >= WINDOW_MS then
  -- A window that ended long ago (the last run) says nothing about now.
  if now - started >= 2 * WINDOW_MS then current = nil end
  previous, current, started = current, seen, now
else
  current = math.min(current, seen)
end
local others = previous and math.min(previous, current) or current
if rejected then others = math.max(others, seen) end
local cap = threshold - others - margin
-- Staying under the throttle point is a preference, not the service's limit: a throttled query
-- still runs, on half the threads (ReferrerGuardRailPolicy's threads_throttle_divider). When
-- other callers alone hold the referrer near or past that point, keeping under it would starve
-- the fleet (1 slot against 75 others), so it never takes more than half the room to refusal.
if use_throttle and throttle > 0 then cap = math.min(cap, math.max(throttle - others, math.ceil(cap / 2))) end
cap = math.max(1, cap)
local a = redis.call('HMGET', adaptive, 'service_rejected_ms', 'service_cap', 'service_until_ms')
local last_rejected, held, held_until = tonumber(a[1] or '0'), tonumber(a[2]), tonumber(a[3] or '0')
if rejected then
  redis.call('HSET', adaptive, 'service_rejected_ms', now)
elseif now - age_ms < last_rejected and held and held_until > now then
  cap = math.min(cap, held)
end
local room = threshold - margin
if use_throttle and throttle > 0 then room = math.min(room, throttle) end
room = math.max(1, room)
redis.call('HSET', adaptive, 'service_cap', cap, 'service_until_ms', now + ttl_ms,
  'service_room', room, 'service_room_until_ms', now + memory_ms,
  'service_quota_used', used, 'service_threshold', threshold, 'service_throttle', throttle,
  'service_others', others, 'service_heard_ms', now,
  -- The most leases seen at an answer since the last slot sample: the sample shows the bursts
  -- the service counted, not the lull between them (`slots_history` takes and clears it).
  'service_peak_in_use', math.max(tonumber(w[4] or '0'), in_use),
  'service_window_ms', started, 'service_window_min', current, 'service_previous_min', previous or current)
if touch_due(adaptive) then touch(adaptive) end
return {cap, others, in_use, limit_of(default_limit)}
