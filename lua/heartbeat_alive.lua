-- heartbeat_alive: counts the workers that beat recently, on Redis time.
-- KEYS: 1 workers (zset name -> last beat, ms)
-- ARGV: 1 within_ms
-- Returns: how many workers beat within within_ms.
--- @include "time"
local workers = KEYS[1]
local within_ms = tonumber(ARGV[1])
local now = now_ms()
return redis.call('ZCOUNT', workers, now - within_ms, '+inf')
