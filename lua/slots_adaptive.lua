-- slots_adaptive: one worker's report of its queries' answers since its last report, added to the
-- fleet's current window; the first report after the window ends closes it, once for the whole
-- fleet (no leader), and moves the multiplier that scales the slot limit and every rate:
--   429 ratio above high_ratio            -> down by decrease_pct          (signal "429")
--   else, with use_throttle, throttled ratio above high_ratio
--                                         -> down by decrease_pct / 4      (signal "throttle")
--   else, with use_throttle, any throttled -> hold                         (signal "throttle")
--   else, if the limit was full (all slots held or a waiter queued) at any report of the window
--                                         -> up by increase_pct            (signal "demand")
--   else hold. Fewer than min_samples answers in the window: no decision. Clamped to [min, max].
-- The 429 cut does not wait for the window's end: the first report that takes the window's 429
-- ratio above high_ratio (with min_samples answers) cuts at once, at most once per window, and
-- the window's close then holds on 429s instead of cutting again.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua); the state lives in the adaptive hash ( multiplier,
--       window_start_ms, ok, r429, throttled, full, windows (closed so far), last_* of the
--       latest closed window)
-- ARGV: 1 ok, 2 r429, 3 throttled (answers since this worker's last report; ok includes
--       throttled), 4 window_ms, 5 high_ratio, 6 increase_pct, 7 decrease_pct, 8 min_multiplier,
--       9 max_multiplier, 10 use_throttle (0|1), 11 min_samples, 12 default_limit
-- Returns: {multiplier (string), closed (0 no, 1 the window closed, 2 cut mid-window),
--           direction (0 none, 1 up, -1 down, 2 hold),
--           signal ("429" | "throttle" | "demand" | "" ), window ok, window 429, window throttled,
--           limit in force}
local SLOT_KEYS = {'limit', 'leases', 'queue', 'adaptive'}
--- @include "slots"
local ok, r429, throttled = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window_ms, high = tonumber(ARGV[4]), tonumber(ARGV[5])
local inc, dec = tonumber(ARGV[6]) / 100, tonumber(ARGV[7]) / 100
local min_m, max_m = tonumber(ARGV[8]), tonumber(ARGV[9])
local use_throttle, min_samples, default_limit = ARGV[10] == '1', tonumber(ARGV[11]), ARGV[12]
local now = now_ms()

local function num(field, default)
  return tonumber(redis.call('HGET', adaptive, field) or default)
end

local m = num('multiplier', max_m)
local start = num('window_start_ms', now)
local full = (redis.call('ZCOUNT', leases, '(' .. now, '+inf') >= limit_of(default_limit)
  or redis.call('ZCARD', queue) > 0) and 1 or 0

if now < start + window_ms then
  redis.call('HINCRBY', adaptive, 'ok', ok)
  redis.call('HINCRBY', adaptive, 'r429', r429)
  redis.call('HINCRBY', adaptive, 'throttled', throttled)
  if full == 1 then redis.call('HSET', adaptive, 'full', 1) end
  if not redis.call('HGET', adaptive, 'window_start_ms') then
    redis.call('HSET', adaptive, 'window_start_ms', now, 'multiplier', string.format('%.6f', m))
  end
  local w_ok, w_429 = num('ok', 0), num('r429', 0)
  if w_ok + w_429 >= min_samples and w_429 / (w_ok + w_429) > high and num('cut', 0) == 0 then
    local before = m
    m = math.min(max_m, math.max(min_m, m * (1 - dec)))
    redis.call('HSET', adaptive, 'multiplier', string.format('%.6f', m), 'cut', 1,
      'last_ok', w_ok, 'last_r429', w_429, 'last_throttled', num('throttled', 0), 'last_signal', '429', 'last_closed_ms', now)
    touch(adaptive)
    local direction = math.abs(m - before) < 1e-9 and 2 or -1
    return {string.format('%.6f', m), 2, direction, '429', w_ok, w_429, num('throttled', 0), limit_of(default_limit)}
  end
  touch(adaptive)
  return {string.format('%.6f', m), 0, 0, '', 0, 0, 0, limit_of(default_limit)}
end

-- Close the window that ended: this report belongs to the next one.
local w_ok, w_429, w_thr = num('ok', 0), num('r429', 0), num('throttled', 0)
local w_full = num('full', 0) == 1 or full == 1
local cut = num('cut', 0) == 1
local samples = w_ok + w_429
local before = m
local direction, signal = 0, ''
if samples >= min_samples then
  if w_429 / samples > high and cut then
    direction, signal = 2, '429'
  elseif w_429 / samples > high then
    m, direction, signal = m * (1 - dec), -1, '429'
  elseif use_throttle and w_thr / samples > high then
    m, direction, signal = m * (1 - dec / 4), -1, 'throttle'
  elseif use_throttle and w_thr > 0 then
    direction, signal = 2, 'throttle'
  elseif w_full then
    m, direction, signal = m * (1 + inc), 1, 'demand'
  else
    direction = 2
  end
end
m = math.min(max_m, math.max(min_m, m))
if (direction == 1 or direction == -1) and math.abs(m - before) < 1e-9 then direction = 2 end
redis.call('HINCRBY', adaptive, 'windows', 1)
redis.call('HSET', adaptive, 'multiplier', string.format('%.6f', m), 'window_start_ms', now,
  'ok', ok, 'r429', r429, 'throttled', throttled, 'full', full, 'cut', 0,
  'last_ok', w_ok, 'last_r429', w_429, 'last_throttled', w_thr, 'last_signal', signal, 'last_closed_ms', now)
touch(adaptive)
return {string.format('%.6f', m), 1, direction, signal, w_ok, w_429, w_thr, limit_of(default_limit)}
