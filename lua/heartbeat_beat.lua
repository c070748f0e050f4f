-- heartbeat_beat: stamps a worker with Redis time and drops workers silent for longer than
-- stale_ms (dead ones); the set itself expires with the fleet.
-- KEYS: 1 workers (zset name -> last beat, ms)
-- ARGV: 1 name, 2 stale_ms
-- Returns: 1
local workers = KEYS[1]
local name, stale_ms = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', workers, now, name)
redis.call('ZREMRANGEBYSCORE', workers, '-inf', now - stale_ms)
redis.call('PEXPIRE', workers, stale_ms)
return 1
