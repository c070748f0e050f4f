-- run_prelude: shared by the run-record scripts (prepended to each).
-- append_trail: adds `<now_ms> <line>` to an org's trail, keeping its last `kept` lines.
local function append_trail(trail, org, now_ms, line, kept)
  local lines = {}
  local prev = redis.call('HGET', trail, org)
  if prev then
    for l in string.gmatch(prev, '[^\n]+') do lines[#lines + 1] = l end
  end
  lines[#lines + 1] = now_ms .. ' ' .. line
  while #lines > kept do table.remove(lines, 1) end
  redis.call('HSET', trail, org, table.concat(lines, '\n'))
end

local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
