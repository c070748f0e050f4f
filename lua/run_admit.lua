-- run_admit: what a job asks of the run record before it takes a slot, in one call: whether the
-- run planned the org (and, when not, whether the run exists at all), the org's outcome so far
-- and the attempt open for it. Reads only.
-- KEYS: 1 run (hash), 2 plan (hash org -> projects), 3 orgs (hash org -> outcome),
--       4 attempts (hash org -> n)
-- ARGV: 1 org
-- Returns: {planned (1 planned, 0 not planned, -1 no such run), outcome or '', attempt (0 when none)}
local run, plan, orgs, attempts, org = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
if redis.call('HEXISTS', plan, org) == 0 then
  -- Rare, so asked only now: a planned org implies its run (the plan never outlives the run).
  return {redis.call('EXISTS', run) == 1 and 0 or -1, '', 0}
end
return {1, redis.call('HGET', orgs, org) or '', tonumber(redis.call('HGET', attempts, org) or '0')}
