-- time: Redis's own clock (TIME), never a worker's, in the unit each script keeps.
-- Included with `--- @include "time"`; each script includes it once whatever includes it.
-- A script runs whole, so it reads the clock once: every helper answers from the first TIME
-- of the call (one command, not one per helper that needs the time).
local time_reply = nil

local function redis_time()
  if not time_reply then time_reply = redis.call('TIME') end
  return time_reply
end

local function now_s()
  return tonumber(redis_time()[1])
end

local function now_ms()
  local t = redis_time()
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis_time()
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
