-- dead_jobs: requeues or purges dead-lettered jobs. Requeue: a job whose payload is JSON goes back
-- to the ready list with its metadata reset (status Pending, attempts 0, reason dropped) and
-- fetchers are woken; a payload that is not JSON, or missing, stays dead (requeuing it would only
-- stop a job loop again). Purge: the job's data and metadata are deleted.
-- KEYS: 1 dead (set of ids), 2 data (hash id -> payload), 3 ready (list), 4 signal (list),
--       5 meta prefix (the job's metadata hash is <prefix>:<id>)
-- ARGV: 1 action ("requeue" | "purge"), 2.. ids (none: every dead job)
-- Returns: {done, left}: jobs requeued or purged, and jobs left dead because they cannot run.
local dead, data, ready, signal, meta_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local action = ARGV[1]
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('SMEMBERS', dead)
end
local done, left = 0, 0
for _, id in ipairs(ids) do
  if redis.call('SISMEMBER', dead, id) == 1 then
    local meta = meta_prefix .. ':' .. id
    if action == 'purge' then
      redis.call('HDEL', data, id)
      redis.call('DEL', meta)
      redis.call('SREM', dead, id)
      done = done + 1
    else
      local payload = redis.call('HGET', data, id)
      if payload and pcall(cjson.decode, payload) then
        redis.call('SREM', dead, id)
        redis.call('HSET', meta, 'status', 'Pending', 'attempts', 0)
        redis.call('HDEL', meta, 'projector_reason')
        redis.call('RPUSH', ready, id)
        done = done + 1
      else
        left = left + 1
      end
    end
  end
end
if action ~= 'purge' and done > 0 then
  redis.call('DEL', signal)
  redis.call('LPUSH', signal, 1)
end
return {done, left}
