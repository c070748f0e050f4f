-- slots_acquire: grants a slot now if one is free and nobody is queued, else queues the caller
-- (wait_ms > 0) or answers its would-be position (wait_ms = 0). Idempotent by waiter id: a retry
-- after a lost reply finds the lease it was granted and returns it again.
-- KEYS: the nine slot keys (see slots_prelude)
-- ARGV: 1 id (waiter and lease id), 2 info (holder|org), 3 lease_ms, 4 wait_ms, 5 default_limit,
--       6 reserve_ms (how long a handed-off slot waits to be collected), 7 wake_prefix
-- Returns: {granted (0|1), token if granted else queue position, in_use, limit, reclaimed}
local id, info, lease_ms, wait_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local default_limit, reserve_ms, wake_prefix = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local now = now_ms()
local held = redis.call('ZSCORE', leases, id)
if held and tonumber(held) > now then
  local fields = redis.call('HGET', holders, id) or ''
  local token = tonumber(string.match(fields, '|(%d+)$') or '0')
  return {1, token, redis.call('ZCARD', leases), tonumber(redis.call('GET', limit_key) or default_limit), 0}
end
local reclaimed = reclaim(now)
local limit = limit_of(default_limit)
hand_off(now, limit, reserve_ms, wake_prefix)
local token = collect(id, lease_ms, now, wake_prefix)
if not token and redis.call('ZCARD', queue) == 0 and redis.call('ZCARD', leases) < limit then
  token = grant(id, info, now + lease_ms, now)
end
if token then
  return {1, token, redis.call('ZCARD', leases), limit, reclaimed}
end
local position
if wait_ms > 0 then
  if not redis.call('ZSCORE', queue, id) then
    redis.call('ZADD', queue, redis.call('INCR', seq), id)
    redis.call('HSET', waiting, id, info)
  end
  redis.call('ZADD', deadlines, now + wait_ms, id)
  touch(seq, queue, deadlines, waiting)
  position = redis.call('ZRANK', queue, id) + 1
else
  position = redis.call('ZCARD', queue) + 1
end
return {0, position, redis.call('ZCARD', leases), limit, reclaimed}
