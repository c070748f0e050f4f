-- slots_acquire: grants a slot now if one is free and nobody is queued, else queues the caller
-- (wait_ms > 0) or answers its would-be position (wait_ms = 0). Idempotent by waiter id: a retry
-- after a lost reply finds the lease it was granted and returns it again.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua)
-- ARGV: 1 id (waiter and lease id), 2 info (holder|org), 3 lease_ms, 4 wait_ms (how long the
--       entry lasts without another call: 0 asks for a position only), 5 default_limit,
--       6 reserve_ms (how long a handed-off slot waits to be collected), 7 wake_prefix
-- Returns: {granted (0|1), token if granted else queue position, in_use, limit, reclaimed}
local SLOT_KEYS = {'limit', 'leases', 'holders', 'fence', 'seq', 'queue', 'waiter_deadlines', 'waiting', 'adaptive'}
--- @include "slots"
local id, info, lease_ms, wait_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local default_limit, reserve_ms, wake_prefix = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local now = now_ms()
local held = redis.call('ZSCORE', leases, id)
if held and tonumber(held) > now then
  -- Granted already: a retry after a lost reply, or a slot handed to this waiter while it was
  -- between two waits on its wake-up list. A hand-off is only reserved for reserve_ms, so the
  -- lease becomes a full one here, as a collect would make it; left at the reservation it would
  -- lapse under a running query and be granted again. The wake-up token is spent with it.
  redis.call('ZADD', leases, 'XX', 'GT', now + lease_ms, id)
  redis.call('DEL', wake_prefix .. id)
  local fields = redis.call('HGET', holders, id) or ''
  local token = tonumber(string.match(fields, '|(%d+)$') or '0')
  return {1, token, redis.call('ZCARD', leases), tonumber(redis.call('GET', limit_key) or default_limit), 0}
end
local reclaimed, waiters = reclaim(now)
local in_use = redis.call('ZCARD', leases)
local limit = limit_of(default_limit)
local token
in_use, waiters, token = hand_off(now, limit, reserve_ms, wake_prefix, in_use, waiters, id)
if token then
  -- This caller was queued and the hand-off reached it: its reserved lease becomes a full one.
  redis.call('ZADD', leases, 'XX', 'GT', now + lease_ms, id)
elseif waiters == 0 and in_use < limit then
  token = grant(id, info, now + lease_ms, now, in_use)
  in_use = in_use + 1
end
if token then
  return {1, token, in_use, limit, reclaimed}
end
local position
if wait_ms > 0 then
  if waiters == 0 or not redis.call('ZSCORE', queue, id) then
    -- Scored by arrival on Redis time (ms x 1000, plus the arrival counter to keep first come
    -- first served within one ms): operators see how long the head of the line has waited.
    redis.call('ZADD', queue, now * 1000 + redis.call('INCR', seq) % 1000, id)
    redis.call('HSET', waiting, id, info)
  end
  -- wait_ms is short (the waiter's next re-check and a second more): a live waiter renews it at
  -- every re-check, and a dead one's entry is reclaimed about a second after it would have
  -- re-checked, so no slot is handed to a process that is gone.
  redis.call('ZADD', deadlines, now + wait_ms, id)
  -- An empty queue means these keys are new.
  if waiters == 0 or touch_due(seq) then touch(seq, queue, deadlines, waiting) end
  position = waiters == 0 and 1 or redis.call('ZRANK', queue, id) + 1
else
  position = waiters + 1
end
return {0, position, in_use, limit, reclaimed}
