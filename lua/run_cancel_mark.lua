-- run_cancel_mark: puts a run in the cancelled set at Redis time, drops entries older than
-- ttl_ms, and announces the run on the cancel channel, so every worker's mirror
-- (`events::CancelWatch`, shared/runs/src/events.rs) knows it: live ones by the announcement, reconnecting ones by the set.
-- KEYS: 1 cancelled runs (zset run id -> ms)
-- ARGV: 1 run id, 2 ttl_ms, 3 cancel channel
-- Returns: 1
--- @include "time"
local cancelled_runs = KEYS[1]
local now_ms = now_ms() -- this call's time; shadows the helper from here on
redis.call('ZADD', cancelled_runs, now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', cancelled_runs, '-inf', now_ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', cancelled_runs, ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
