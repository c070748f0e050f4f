-- run_compact: takes completed orgs of a finished run out of its per-org hashes, once the caller
-- has written them to the run's compact list (`RunRecords::compact`). An org is taken out only if
-- its outcome is still `completed` (a completed outcome is final, but a second call after a lost
-- reply must not count it twice); the run's `compacted` count grows by the orgs taken out, and
-- `finish` (lib/runs.lua) counts them as recorded, so a run reopened by `runs retry` still
-- finishes.
-- KEYS: 1 run (hash), 2 orgs (hash org -> outcome), 3 plan, 4 attempts, 5 trail
-- ARGV: orgs
-- Returns: how many orgs this call took out.
local run, orgs, plan, attempts, trail = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local n = 0
for _, org in ipairs(ARGV) do
  if redis.call('HGET', orgs, org) == 'completed' then
    redis.call('HDEL', orgs, org)
    redis.call('HDEL', plan, org)
    redis.call('HDEL', attempts, org)
    redis.call('HDEL', trail, org)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', run, 'compacted', n) end
return n
