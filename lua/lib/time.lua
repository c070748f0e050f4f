-- time: Redis's own clock (TIME), never a worker's, in the unit each script keeps.
-- Included with `--- @include "time"`; each script includes it once whatever includes it.
local function now_s()
  return tonumber(redis.call('TIME')[1])
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
