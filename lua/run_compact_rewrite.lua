-- run_compact_rewrite: after `run_compact` took most fields out of a run's per-org hashes, writes
-- each small hash afresh. Redis shrinks a hash's table only by incremental rehashing driven by
-- later commands on that hash, and a finished run's hashes see almost none: without this, a
-- 2,000-field plan left with 10 fields kept its 2,048-bucket table (16 KB) for runs.retention.
-- A hash is rewritten only when it has at most ARGV[1] fields, so a call stays short; it keeps
-- its fields, values and TTL, and no other command sees it half-written.
-- KEYS: the hashes (orgs, plan, attempts, trail)
-- ARGV: 1 most fields a hash may have to be rewritten
-- Returns: how many hashes were rewritten.
local most, rewritten = tonumber(ARGV[1]), 0
for _, key in ipairs(KEYS) do
  local n = redis.call('HLEN', key)
  if n > 0 and n <= most then
    local ttl = redis.call('PTTL', key)
    local all = redis.call('HGETALL', key)
    redis.call('DEL', key)
    for i = 1, #all, 2000 do
      redis.call('HSET', key, unpack(all, i, math.min(i + 1999, #all)))
    end
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    rewritten = rewritten + 1
  end
end
return rewritten
