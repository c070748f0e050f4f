-- heartbeat_beat: stamps a worker with Redis time, refreshes its registration, and drops workers
-- silent for longer than stale_ms (dead ones); the set itself expires with the fleet.
-- KEYS: 1 workers (zset name -> last beat, ms), 2 registration (hash of this worker)
-- ARGV: 1 name, 2 stale_ms, 3 registration_ttl_ms, 4.. registration field/value pairs
-- Returns: 1
--- @include "time"
local workers, registration = KEYS[1], KEYS[2]
local name, stale_ms, registration_ttl_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
redis.call('ZADD', workers, now, name)
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now - stale_ms)
redis.call('PEXPIRE', workers, stale_ms)
if #ARGV > 3 then
  redis.call('HSET', registration, 'last_beat_ms', now, unpack(ARGV, 4))
  redis.call('PEXPIRE', registration, registration_ttl_ms)
end
return 1
