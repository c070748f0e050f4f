-- runs: shared by the run-record scripts (`--- @include "runs"` at the top of each).
-- append_trail: adds `<now_ms> <line>` to an org's trail, keeping its last `kept` lines.
local function append_trail(trail, org, now_ms, line, kept)
  local entry = now_ms .. ' ' .. line
  -- An org's first attempt has no trail yet: one command.
  if kept >= 1 and redis.call('HSETNX', trail, org, entry) == 1 then return end
  local lines = {}
  for l in string.gmatch(redis.call('HGET', trail, org) or '', '[^\n]+') do lines[#lines + 1] = l end
  lines[#lines + 1] = entry
  while #lines > kept do table.remove(lines, 1) end
  redis.call('HSET', trail, org, table.concat(lines, '\n'))
end

--- @include "time"

-- keep: the run's summary (its record hash) lives summary_ttl_ms after this write, its orgs
-- ttl_ms, its trail trail_ttl_ms.
local function keep(run, orgs, trail, ttl_ms, trail_ttl_ms, summary_ttl_ms)
  redis.call('PEXPIRE', run, summary_ttl_ms)
  redis.call('PEXPIRE', orgs, ttl_ms)
  redis.call('PEXPIRE', trail, trail_ttl_ms)
end

-- keep_due: whether `keep` is due, going by the run's own remaining TTL (set with the others by
-- `keep`, to summary_ttl_ms): a quarter of the
-- shorter retention (at most an hour) after the last refresh, or when the run has no TTL. Every
-- write within that window would only move the expiry by less than the window, so one PTTL
-- replaces a PEXPIRE per key on most writes; a key that a write creates must be kept by the
-- caller whatever this says.
local function keep_due(run, ttl_ms, trail_ttl_ms, summary_ttl_ms)
  local window = math.min(3600000, math.floor(tonumber(ttl_ms) / 4), math.floor(tonumber(trail_ttl_ms) / 4))
  return redis.call('PTTL', run) < tonumber(summary_ttl_ms) - window
end

-- finish: once every planned org has an outcome, stamps the run's end (Redis time) and signals
-- `run-once --wait` on the finished list, once per finish (a retry clears the stamp).
-- Returns 0 not finished, 1 finished before this call, 2 finished by this call.
-- `recorded` is the number of orgs with an outcome, when the caller has it.
-- Orgs compacted after an earlier finish (`lua/run_compact.lua`) left the orgs hash but count.
-- `counts`, when the caller read them already, is the run hash's orgs_total and compacted.
local function finish(run, orgs, finished, now_ms, ttl_ms, recorded, counts)
  local r = counts or redis.call('HMGET', run, 'orgs_total', 'compacted')
  local total = tonumber(r[1] or '0')
  if total == 0 or (recorded or redis.call('HLEN', orgs)) + tonumber(r[2] or '0') < total then return 0 end
  if redis.call('HEXISTS', run, 'finished_ms') == 1 then return 1 end
  redis.call('HSET', run, 'finished_ms', now_ms)
  redis.call('RPUSH', finished, 1)
  redis.call('PEXPIRE', finished, ttl_ms)
  return 2
end
