-- push_jobs: enqueues jobs of one run in apalis-redis 1.0.0's layout, deduplicated by one set per
-- run instead of apalis's string key per job (~45 B per org instead of ~160 B, one SADD instead of
-- SETNX + EXPIRE). A job whose member the run's set already holds is dropped: a re-fan-out or a
-- repeated retry within the dedupe window enqueues nothing twice. A job due now (run_at at or
-- before Redis time) goes straight to the ready list and the fetchers are woken; a later one waits
-- in the scheduled set. The metadata is what apalis's fetch needs: attempts, max_attempts, status.
-- KEYS: 1 data (hash id -> payload), 2 ready (list), 3 signal (list), 4 scheduled (zset),
--       5 the run's dedupe set
-- ARGV: 1 meta prefix (a job's metadata hash is <prefix>:<id>), 2 the dedupe set's ttl_ms,
--       3 max_attempts, 4 the jobs-ready channel, then per job: id, member, payload, run_at (unix s)
-- Returns: {ready, scheduled}: how many jobs were new, by where they went.
--- @include "time"
local data, ready, signal, scheduled, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local meta_prefix, ttl_ms, max_attempts, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_s()
local now_ready, later = {}, 0
for i = 5, #ARGV, 4 do
  local id, member, payload, run_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if redis.call('SADD', dedupe, member) == 1 and redis.call('HSETNX', data, id, payload) == 1 then
    redis.call('HSET', meta_prefix .. ':' .. id, 'attempts', 0, 'max_attempts', max_attempts, 'status', 'Pending')
    if run_at <= now then
      now_ready[#now_ready + 1] = id
    else
      redis.call('ZADD', scheduled, run_at, id)
      later = later + 1
    end
  end
end
redis.call('PEXPIRE', dedupe, ttl_ms)
-- In steps: unpack() of thousands of ids would overflow Lua's stack.
for i = 1, #now_ready, 1000 do
  redis.call('RPUSH', ready, unpack(now_ready, i, math.min(i + 999, #now_ready)))
end
if #now_ready > 0 then
  redis.call('DEL', signal)
  redis.call('LPUSH', signal, 1)
  redis.call('PUBLISH', channel, 1)
end
return {#now_ready, later}
