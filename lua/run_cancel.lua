-- run_cancel: ends every given org of a run that has no outcome yet as `outcome` (`cancelled` by
-- an operator, `failed` when the query service refused the query itself and the run stopped),
-- with a trail line; a cancel also marks the run cancelled (Redis time). Orgs that already ended
-- keep their outcome.
-- `lua/run_cancel_mark.lua` has put the run in the cancelled set and announced it before the
-- first call (apart, since that set is not one of the run's keys: on a cluster it lives in
-- another slot), so a job that gets its slot from then on sends no query.
-- KEYS: 1 run, 2 orgs (hash org -> outcome), 3 trail (hash org -> lines),
--       4 finished (list: an item is pushed when the run finishes, for `run-once --wait`)
-- ARGV: 1 ttl_ms, 2 trail line (JSON), 3 attempts kept in the trail, 4 the trail's ttl_ms,
--       5 the summary's ttl_ms, 6 outcome, 7.. orgs
-- Returns: how many orgs this call cancelled.
--- @include "runs"
local run, orgs, trail = KEYS[1], KEYS[2], KEYS[3]
local ttl_ms, line, kept, trail_ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('EXISTS', run) == 0 then return 0 end
local now_ms = now_ms() -- this call's time; shadows the helper from here on
local cancelled = 0
local outcome = ARGV[6]
for i = 7, #ARGV do
  local org = ARGV[i]
  if redis.call('HSETNX', orgs, org, outcome) == 1 then
    cancelled = cancelled + 1
    append_trail(trail, org, now_ms, line, kept)
  end
end
redis.call('HINCRBY', run, outcome, cancelled)
if outcome == 'cancelled' and redis.call('HEXISTS', run, 'cancelled_ms') == 0 then
  redis.call('HSET', run, 'cancelled_ms', now_ms)
end
keep(run, orgs, trail, ttl_ms, trail_ttl_ms, ARGV[5])
finish(run, orgs, KEYS[4], now_ms, ttl_ms)
return cancelled
