-- run_retry: reopens orgs of a run for a follow-up attempt (`projectorctl runs retry`). An org is
-- reopened only if its outcome is still the one the caller read, so a concurrent record or retry
-- is never undone; its outcome is removed from the totals, its attempt number goes up by one and
-- the run is no longer finished. Its trail keeps the earlier attempts.
-- KEYS: 1 run, 2 orgs (hash org -> outcome), 3 attempts (hash org -> n)
-- ARGV: 1 ttl_ms, then pairs: org, the outcome it had when read
-- Returns: a flat list org, attempt for every org reopened.
--- @include "runs"
local run, orgs, attempts = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', run) == 0 then return {} end
local reopened = {}
for i = 2, #ARGV, 2 do
  local org, had = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', orgs, org) == had then
    redis.call('HDEL', orgs, org)
    redis.call('HINCRBY', run, had, -1)
    local n = redis.call('HINCRBY', attempts, org, 1)
    redis.call('HINCRBY', run, 'retried', 1)
    reopened[#reopened + 1] = org
    reopened[#reopened + 1] = n
  end
end
if #reopened > 0 then
  redis.call('HDEL', run, 'finished_ms')
  redis.call('PEXPIRE', attempts, ARGV[1])
end
return reopened
