-- run_record: records one org's outcome in its run. The first outcome of an org wins; an org the
-- run did not plan, or a run that does not exist, is refused.
-- KEYS: 1 run (hash: orgs_total and a count per outcome), 2 orgs (hash org -> outcome),
--       3 plan (hash org -> projects)
-- ARGV: 1 org, 2 outcome, 3 ttl_ms (the record is kept this long after its last write)
-- Returns: -1 no such run, -2 org not planned, 0 the org already had an outcome, 1 recorded,
--          2 recorded the run's last org (exactly one caller sees the run finish; the run's
--          `finished_ms` is set then, on Redis time).
local run, orgs, plan = KEYS[1], KEYS[2], KEYS[3]
local org, outcome, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', run) == 0 then return -1 end
if redis.call('HEXISTS', plan, org) == 0 then return -2 end
if redis.call('HSETNX', orgs, org, outcome) == 0 then return 0 end
redis.call('HINCRBY', run, outcome, 1)
redis.call('PEXPIRE', run, ttl_ms)
redis.call('PEXPIRE', orgs, ttl_ms)
local total = tonumber(redis.call('HGET', run, 'orgs_total') or '0')
if total > 0 and redis.call('HLEN', orgs) == total then
  local t = redis.call('TIME')
  redis.call('HSET', run, 'finished_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  return 2
end
return 1
