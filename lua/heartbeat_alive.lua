-- heartbeat_alive: counts the workers that beat recently, on Redis time.
-- KEYS: 1 workers (zset name -> last beat, ms)
-- ARGV: 1 within_ms
-- Returns: how many workers beat within within_ms.
local workers = KEYS[1]
local within_ms = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', workers, now - within_ms, '+inf')
