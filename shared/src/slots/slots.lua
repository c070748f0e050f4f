-- Shared prelude of every slot-limiter script (prepended to each one).
-- KEYS: 1 limit, 2 leases, 3 holders, 4 fence, 5 seq, 6 queue, 7 waiter_deadlines, 8 waiting
-- Time is Redis's own (TIME), never a worker's clock.
local KEY_TTL_MS = 604800000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Refreshes the TTL of the keys a script has just written (by KEYS index), so nothing leaks
-- and nothing in use expires; keys a call only reads or shrinks are left alone (hot-path cost).
local function touch(...)
  for _, i in ipairs({...}) do redis.call('PEXPIRE', KEYS[i], KEY_TTL_MS) end
end

local function limit_of(default)
  local l = redis.call('GET', KEYS[1])
  if not l then
    redis.call('SET', KEYS[1], default, 'PX', KEY_TTL_MS)
    return tonumber(default)
  end
  return tonumber(l)
end

-- Drops expired leases (dead or paused holders) and waiters past their deadline.
local function reclaim(now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(expired) do
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
  local gone = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now)
  for _, id in ipairs(gone) do
    redis.call('ZREM', KEYS[6], id)
    redis.call('ZREM', KEYS[7], id)
    redis.call('HDEL', KEYS[8], id)
  end
  return #expired
end

local function grant(id, info, expiry, now)
  local token = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[2], expiry, id)
  redis.call('HSET', KEYS[3], id, info .. '|' .. now .. '|' .. token)
  -- The limit is refreshed with every grant, so an operator's runtime limit outlives a quiet week only if used.
  touch(1, 2, 3, 4)
  return token
end

-- Hands free slots to waiters in arrival order: each gets a lease reserved for reserve_ms and
-- its fencing token pushed to its own wake-up list, which it is blocked on.
local function hand_off(now, limit, reserve_ms, wake_prefix)
  while redis.call('ZCARD', KEYS[2]) < limit do
    local head = redis.call('ZPOPMIN', KEYS[6])
    if #head == 0 then break end
    local w = head[1]
    redis.call('ZREM', KEYS[7], w)
    local info = redis.call('HGET', KEYS[8], w) or ''
    redis.call('HDEL', KEYS[8], w)
    local token = grant(w, info, now + reserve_ms, now)
    local wake = wake_prefix .. w
    redis.call('RPUSH', wake, token)
    redis.call('PEXPIRE', wake, reserve_ms)
  end
end

-- A waiter collects a handed-off slot: the lease is extended to a full ttl.
local function collect(id, ttl_ms, now, wake_prefix)
  local token = redis.call('LPOP', wake_prefix .. id)
  if token and redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[2], 'XX', 'GT', now + ttl_ms, id)
    return tonumber(token)
  end
  return nil
end
