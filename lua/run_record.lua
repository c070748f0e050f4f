-- run_record: records one org's outcome in its run, with its trail line. The first outcome of an
-- attempt wins; an org the run did not plan, a run that does not exist, or an attempt that a
-- later one (`projectorctl runs retry`) superseded, is refused. One exception to the first
-- outcome winning: an org a cancel marked `cancelled`, or the deadline sweep `deadline`, while
-- its job was already querying takes that job's outcome if it queried (completed, failed,
-- rate_limited), so the record says what reached the query service, and `runs retry` never
-- queries a completed org again.
-- KEYS: 1 run (hash: orgs_total and a count per outcome), 2 orgs (hash org -> outcome),
--       3 plan (hash org -> projects), 4 trail (hash org -> lines), 5 attempts (hash org -> n),
--       6 finished (list: an item is pushed when the run finishes, for `run-once --wait`)
-- ARGV: 1 org, 2 outcome, 3 ttl_ms (the record is kept this long after its last write),
--       4 attempt, 5 trail line (JSON), 6 attempts kept in the trail, 7 the trail's ttl_ms,
--       8 the summary's ttl_ms (the run hash outlives the per-org hashes)
-- Returns: -1 no such run, -2 org not planned, 0 the org already had an outcome (or the attempt
--          is stale), 1 recorded, 2 recorded the run's last org (exactly one caller sees the run
--          finish; the run's `finished_ms` is set then, on Redis time).
--- @include "runs"
local run, orgs, plan, trail, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local org, outcome, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
local attempt, line, kept, trail_ttl_ms, summary_ttl_ms = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
-- One read of the run hash serves the checks below and `finish`: its org count, the orgs
-- compacted after an earlier finish, and whether `runs retry` ever wrote an attempt number.
local counts = redis.call('HMGET', run, 'orgs_total', 'compacted', 'retried')
if not counts[1] and redis.call('EXISTS', run) == 0 then return -1 end
if redis.call('HEXISTS', plan, org) == 0 then return -2 end
-- With no retry in this run there is no attempt number to be stale against.
if counts[3] and attempt < tonumber(redis.call('HGET', attempts, org) or '0') then return 0 end
if redis.call('HSETNX', orgs, org, outcome) == 0 then
  local queried = outcome == 'completed' or outcome == 'failed' or outcome == 'rate_limited'
  if not queried then return 0 end
  local ended = redis.call('HGET', orgs, org)
  if ended ~= 'cancelled' and ended ~= 'deadline' then return 0 end
  -- The org was already counted: its run cannot finish by this record.
  redis.call('HSET', orgs, org, outcome)
  redis.call('HINCRBY', run, ended, -1)
end
redis.call('HINCRBY', run, outcome, 1)
local now_ms = now_ms() -- this call's time; shadows the helper from here on
append_trail(trail, org, now_ms, line, kept)
local recorded = redis.call('HLEN', orgs)
-- The run's first outcome creates the orgs and trail hashes: they get their TTL now.
if recorded == 1 or keep_due(run, ttl_ms, trail_ttl_ms, summary_ttl_ms) then
  keep(run, orgs, trail, ttl_ms, trail_ttl_ms, summary_ttl_ms)
  redis.call('PEXPIRE', attempts, ttl_ms)
end
if finish(run, orgs, KEYS[6], now_ms, ttl_ms, recorded, counts) == 2 then return 2 end
return 1
