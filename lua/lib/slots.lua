-- slots: shared by every slot-limiter script (`--- @include "slots"` at its top).
-- KEYS: the ones the including script names, in order, in `local SLOT_KEYS = {…}` before its
-- include (the limiter passes exactly those; a helper may only be called by a script that names
-- the keys it uses). All share one hash tag per limiter. By name:
--   limit (string), leases (zset lease id -> expiry ms), holders (hash lease id ->
--   "info|granted_ms|token"), fence (counter of fencing tokens), seq (arrival counter),
--   queue (zset waiter id -> arrival: Redis ms x 1000 + arrival counter mod 1000),
--   waiter_deadlines (zset waiter id -> when its entry lapses unless renewed, ms),
--   waiting (hash waiter id -> info), adaptive (hash: the fleet's multiplier and its window,
--   and the query service's cap: service_cap, service_until_ms, and the numbers it came from;
--   its remembered room: service_room, service_room_until_ms),
--   history (list of the fleet's slot samples)
-- Time is Redis's own (TIME), never a worker's clock.
local key = {}
for i, name in ipairs(SLOT_KEYS) do key[name] = KEYS[i] end
local limit_key, leases, holders, fence = key.limit, key.leases, key.holders, key.fence
local seq, queue, deadlines, waiting = key.seq, key.queue, key.waiter_deadlines, key.waiting
local adaptive, history = key.adaptive, key.history
local KEY_TTL_MS = 604800000

--- @include "time"

-- Refreshes the TTL of the keys a script has just written, so nothing leaks and nothing in use
-- expires; keys a call only reads or shrinks are left alone (hot-path cost).
local function touch(...)
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, KEY_TTL_MS) end
end

-- Whether the keys refreshed together with `clock` are due a refresh: once an hour of their 7-day
-- TTL has gone (or `clock` has none). One PTTL instead of a PEXPIRE per key on every call; a key
-- that a call creates is refreshed by that call, whatever this says.
local TOUCH_EVERY_MS = 3600000
local function touch_due(clock)
  return redis.call('PTTL', clock) < KEY_TTL_MS - TOUCH_EVERY_MS
end

-- The query service's bound on the limit now (`slots_service`): its cap while that is fresh,
-- else its remembered room while that is, else nil. `a` holds the adaptive hash's service_cap,
-- service_until_ms, service_room and service_room_until_ms, in that order, from index `i`.
local function service_bound(a, i, now)
  local cap, until_ms = tonumber(a[i]), tonumber(a[i + 1])
  if cap and until_ms and until_ms > now then return cap end
  local room, room_until = tonumber(a[i + 2]), tonumber(a[i + 3])
  if room and room_until and room_until > now then return room end
  return nil
end

-- The limit in force: the stored limit times the adaptive multiplier (1 when none), lowered to
-- the query service's bound (`service_bound`), at least 1; 0 during a fleet-wide cooldown after
-- a 429 (`slots_pause`): nobody is granted a slot, waiters wait.
local function effective(limit)
  local a = redis.call('HMGET', adaptive, 'paused_until_ms', 'multiplier',
    'service_cap', 'service_until_ms', 'service_room', 'service_room_until_ms')
  local now = now_ms()
  if tonumber(a[1] or '0') > now then return 0 end
  local l = math.floor(limit * tonumber(a[2] or '1') + 1e-9)
  local bound = service_bound(a, 3, now)
  if bound then l = math.min(l, bound) end
  return math.max(1, l)
end

local function limit_of(default)
  local l = redis.call('GET', limit_key)
  if not l then
    redis.call('SET', limit_key, default, 'PX', KEY_TTL_MS)
    return effective(tonumber(default))
  end
  return effective(tonumber(l))
end

-- Drops expired leases (dead or paused holders) and waiters past their deadline. Returns the
-- number of leases dropped and of waiters left. Every waiter has a deadline, so an empty queue
-- means no deadline to look at.
local function reclaim(now)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for _, id in ipairs(expired) do
    redis.call('ZREM', leases, id)
    redis.call('HDEL', holders, id)
  end
  local waiters = redis.call('ZCARD', queue)
  if waiters > 0 then
    local gone = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now)
    for _, id in ipairs(gone) do
      waiters = waiters - redis.call('ZREM', queue, id)
      redis.call('ZREM', deadlines, id)
      redis.call('HDEL', waiting, id)
    end
  end
  return #expired, waiters
end

-- Grants a lease; `in_use` is the number of leases before this one (0: the lease keys are new).
local function grant(id, info, expiry, now, in_use)
  local token = redis.call('INCR', fence)
  redis.call('ZADD', leases, expiry, id)
  redis.call('HSET', holders, id, info .. '|' .. now .. '|' .. token)
  -- The limit is refreshed with the others, so an operator's runtime limit outlives a quiet week only if used.
  if in_use == 0 or touch_due(fence) then touch(limit_key, leases, holders, fence) end
  return token
end

-- A waiter sets its entry's deadline to its next re-check plus ENTRY_GRACE_MS (1 s,
-- shared/limits/src/slots/redis.rs). One whose deadline is less than this far away is 300 ms
-- late for that re-check: its process is most likely gone.
local OVERDUE_MS = 700

-- Hands free slots to waiters in arrival order: each gets a lease reserved for reserve_ms and
-- its fencing token pushed to its own wake-up list, which it is blocked on. A slot handed to
-- `self_id` (the caller, when it was queued) is returned instead of pushed. A waiter overdue for
-- its re-check is passed over and leaves the line (alive after all, its next call queues it
-- again), so no slot sits reserved for a process that is gone. Returns the leases in use and
-- waiters left afterwards, and the caller's token if it got one.
local function hand_off(now, limit, reserve_ms, wake_prefix, in_use, waiters, self_id)
  local own
  while in_use < limit and waiters > 0 do
    local head = redis.call('ZPOPMIN', queue)
    if #head == 0 then break end
    waiters = waiters - 1
    local w = head[1]
    local due = tonumber(redis.call('ZSCORE', deadlines, w) or '0')
    redis.call('ZREM', deadlines, w)
    local info = redis.call('HGET', waiting, w) or ''
    redis.call('HDEL', waiting, w)
    if w == self_id or due - now >= OVERDUE_MS then
      local token = grant(w, info, now + reserve_ms, now, in_use)
      in_use = in_use + 1
      if w == self_id then
        own = token
      else
        local wake = wake_prefix .. w
        redis.call('RPUSH', wake, token)
        redis.call('PEXPIRE', wake, reserve_ms)
      end
    end
  end
  return in_use, waiters, own
end

-- A waiter collects a handed-off slot: the lease is extended to a full ttl.
local function collect(id, ttl_ms, now, wake_prefix)
  local token = redis.call('LPOP', wake_prefix .. id)
  if token and redis.call('ZSCORE', leases, id) then
    redis.call('ZADD', leases, 'XX', 'GT', now + ttl_ms, id)
    return tonumber(token)
  end
  return nil
end
