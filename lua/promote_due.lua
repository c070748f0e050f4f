-- promote_due: moves due jobs (on Redis time) from the scheduled set to the ready list, at most
-- `max` per call. apalis's own fetch moves every due job with one unpack(), which Redis's Lua
-- refuses past ~8,000 values, so after a worker outage during a big run every fetch would fail.
-- KEYS: 1 scheduled (zset id -> run_at unix s), 2 ready (list), 3 signal (list, wakes fetchers)
-- ARGV: 1 max (jobs per call), 2 the jobs-ready channel (idle job loops fetch at once)
-- Returns: how many jobs were moved (fewer than max means none is left due).
--- @include "time"
local scheduled, ready, signal = KEYS[1], KEYS[2], KEYS[3]
local max = tonumber(ARGV[1])
local now = now_s()
local ids = redis.call('ZRANGEBYSCORE', scheduled, 0, now, 'LIMIT', 0, max)
if #ids > 0 then
  redis.call('RPUSH', ready, unpack(ids))
  redis.call('ZREM', scheduled, unpack(ids))
  redis.call('DEL', signal)
  redis.call('LPUSH', signal, 1)
  redis.call('PUBLISH', ARGV[2], 1)
end
return #ids
