-- remove_jobs: removes waiting jobs from the queue (`projectorctl runs cancel`). A job is removed
-- only while it still waits (in the scheduled set or the ready list); one a worker has fetched
-- meanwhile is left to its worker, whose run record check then refuses it.
-- KEYS: 1 scheduled (zset), 2 ready (list), 3 data (hash id -> payload), 4 meta prefix
-- ARGV: ids
-- Returns: how many jobs were removed.
local scheduled, ready, data, meta_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local removed = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', scheduled, id) + redis.call('LREM', ready, 0, id) > 0 then
    redis.call('HDEL', data, id)
    redis.call('DEL', meta_prefix .. ':' .. id)
    removed = removed + 1
  end
end
return removed
