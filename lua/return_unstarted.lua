-- return_unstarted: gives back the jobs a drained job loop fetched but never started. apalis
-- marks a job in flight when it fetches it, and a loop stopped between a fetch and the job's start
-- (a pause, a shutdown) leaves the job in its in-flight set, where only the orphan sweep of a
-- running loop would find it: during a pause, none runs. Called only once every job the loop
-- started has ended, so each id left is one nobody runs. They go to the front of the ready list,
-- first to be taken, and the loop leaves the set of job loops.
-- KEYS: 1 the loop's in-flight set, 2 ready (list), 3 signal (list), 4 job loops (zset)
-- ARGV: 1 the loop's name, 2 the jobs-ready channel (idle workers fetch at once)
-- Returns: how many jobs went back.
local inflight, ready, signal, loops = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ids = redis.call('SMEMBERS', inflight)
if #ids > 0 then
  redis.call('LPUSH', ready, unpack(ids))
  redis.call('DEL', inflight)
  redis.call('DEL', signal)
  redis.call('LPUSH', signal, 1)
  redis.call('PUBLISH', ARGV[2], 1)
end
redis.call('ZREM', loops, ARGV[1])
return #ids
