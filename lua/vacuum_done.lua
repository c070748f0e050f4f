-- vacuum_done: deletes the data and metadata of up to `max` finished jobs and takes them out of
-- the done set. Only the done set: a job apalis put back for a retry carries status Failed and
-- must keep its data (see docs/apalis-redis.md#vacuum-deletes-retries).
-- KEYS: 1 done (set of job ids), 2 data (hash id -> payload), 3 meta prefix (hash per job at
--       <prefix>:<id>, results at <prefix>:result)
-- ARGV: 1 max (jobs per call)
-- Returns: how many jobs were deleted (fewer than max means the done set is empty).
local done, data, meta = KEYS[1], KEYS[2], KEYS[3]
local ids = redis.call('SPOP', done, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('HDEL', data, id)
  redis.call('DEL', meta .. ':' .. id)
  redis.call('HDEL', meta .. ':result', id)
end
return #ids
