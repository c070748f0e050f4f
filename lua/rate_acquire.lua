-- rate_acquire: one admission under a rate policy of one or more windows, all checked at once
-- (all or nothing) on Redis time. When the wait is within max_delay, the admission time is
-- reserved and returned; otherwise nothing is reserved and the wait comes back as retry_after,
-- in this same call: no polling, no second call to learn the wait.
--   strict: a sliding log per window; no interval of length W ever holds more than N admissions.
--           Admission times never go backwards (first come, first served), so the new time t
--           only has to clear the N-th latest admission of each window by W.
--   smooth: GCRA per window; admissions are spaced W/N apart after a burst of `burst`, and the
--           long-run rate is exactly N/W.
-- A cooldown (set after a 429 from the query service) refuses every admission until it ends,
-- whatever max_delay says: a start held through it could land in a cooldown renewed meanwhile.
-- In shadow mode (enforce = 0) the decision and its state are the same; what enforcement would
-- have done is also counted in the shadow hash, for `projectorctl rate show`.
-- KEYS: 1 cooldown (string; its PTTL is the cooldown left), 2 shadow (hash: would_delay,
--       would_refuse), 3.. one state key per window (strict: zset admission id -> admission time
--       in us; smooth: string, the theoretical arrival time in us)
-- ARGV: 1 mode ("strict" | "smooth"), 2 admission id (unique), 3 max_delay_us, 4 burst (smooth),
--       5 multiplier (scales every limit, at least 1 per window), 6 enforce (0|1), then per
--       window: limit, window_us
-- Returns: {admitted (0|1), wait_us, reason (0 none, 1 window, 2 cooldown),
--           binding window (1-based; 0 when none), admission time (us, Redis time)}
--- @include "time"
local mode, id, max_delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local burst, multiplier, enforce = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local now = now_us()
local at, reason, binding = now, 0, 0

local cooldown_ms = redis.call('PTTL', KEYS[1])
if cooldown_ms > 0 then
  at, reason = now + cooldown_ms * 1000, 2
end

local windows = {}
for i = 3, #KEYS do
  local arg = 7 + (i - 3) * 2
  local limit = math.max(1, math.floor(tonumber(ARGV[arg]) * multiplier + 1e-9))
  windows[#windows + 1] = {key = KEYS[i], limit = limit, span = tonumber(ARGV[arg + 1])}
end

local function later(candidate, i)
  if candidate > at then
    at, reason, binding = candidate, 1, i
  end
end

if mode == 'strict' then
  for i, w in ipairs(windows) do
    -- An admission at or before now - W counts for no time from now on.
    redis.call('ZREMRANGEBYSCORE', w.key, '-inf', string.format('%d', now - w.span))
    local last = redis.call('ZREVRANGE', w.key, 0, 0, 'WITHSCORES')
    if #last == 2 then later(tonumber(last[2]), i) end
    if redis.call('ZCARD', w.key) >= w.limit then
      local nth = redis.call('ZREVRANGE', w.key, w.limit - 1, w.limit - 1, 'WITHSCORES')
      later(tonumber(nth[2]) + w.span, i)
    end
  end
else
  for i, w in ipairs(windows) do
    w.interval = w.span / w.limit
    w.tat = math.max(tonumber(redis.call('GET', w.key) or now), now)
    later(w.tat - (math.min(burst, w.limit) - 1) * w.interval, i)
  end
end

local wait = at - now
local function shadow(field)
  if not enforce then
    redis.call('HINCRBY', KEYS[2], field, 1)
    redis.call('PEXPIRE', KEYS[2], 604800000)
  end
end
if wait > max_delay or reason == 2 then
  shadow('would_refuse')
  return {0, wait, reason, binding, at}
end
if wait > 0 then shadow('would_delay') end
for _, w in ipairs(windows) do
  if mode == 'strict' then
    redis.call('ZADD', w.key, string.format('%d', at), id)
    redis.call('PEXPIRE', w.key, math.ceil((at - now + w.span) / 1000) + 1000)
  else
    local tat = math.max(w.tat, at) + w.interval
    redis.call('SET', w.key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
end
return {1, wait, reason, binding, at}
