-- slots_occupancy: read-only; the gauges report what Redis holds, never a count a process
-- remembers.
-- KEYS: the nine slot keys (see slots_prelude)
-- ARGV: none
-- Returns: {live leases on Redis time, the stored limit or nil, the limit in force (stored limit
--          x adaptive multiplier) or nil, the multiplier (string)}
local now = now_ms()
local stored = redis.call('GET', limit_key)
local in_force = stored and effective(tonumber(stored)) or false
local m = redis.call('HGET', adaptive, 'multiplier') or '1'
return {redis.call('ZCOUNT', leases, '(' .. now, '+inf'), stored, in_force, m}
