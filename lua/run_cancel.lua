-- run_cancel: ends every given org of a run that has no outcome yet as `cancelled`, with a trail
-- line, and marks the run cancelled (Redis time). Orgs that already ended keep their outcome.
-- The run joins the cancelled set and is announced on the cancel channel, so every worker's
-- mirror knows it before this call returns.
-- KEYS: 1 run, 2 orgs (hash org -> outcome), 3 trail (hash org -> lines), 4 cancelled runs (zset),
--       5 finished (list: an item is pushed when the run finishes, for `run-once --wait`)
-- ARGV: 1 ttl_ms, 2 trail line (JSON), 3 attempts kept in the trail, 4 the trail's ttl_ms,
--       5 run id, 6 cancel channel, 7 the summary's ttl_ms, 8.. orgs
-- Returns: how many orgs this call cancelled.
local run, orgs, trail, cancelled_runs = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl_ms, line, kept, trail_ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('EXISTS', run) == 0 then return 0 end
local now_ms = redis_now_ms()
-- Announced first: a job that gets its slot from now on sends no query.
redis.call('ZADD', cancelled_runs, now_ms, ARGV[5])
redis.call('ZREMRANGEBYSCORE', cancelled_runs, '-inf', now_ms - tonumber(ttl_ms))
redis.call('PEXPIRE', cancelled_runs, ttl_ms)
redis.call('PUBLISH', ARGV[6], ARGV[5])
local cancelled = 0
for i = 8, #ARGV do
  local org = ARGV[i]
  if redis.call('HSETNX', orgs, org, 'cancelled') == 1 then
    cancelled = cancelled + 1
    append_trail(trail, org, now_ms, line, kept)
  end
end
redis.call('HINCRBY', run, 'cancelled', cancelled)
if redis.call('HEXISTS', run, 'cancelled_ms') == 0 then redis.call('HSET', run, 'cancelled_ms', now_ms) end
keep(run, orgs, trail, ttl_ms, trail_ttl_ms, ARGV[7])
finish(run, orgs, KEYS[5], now_ms, ttl_ms)
return cancelled
