-- slots_occupancy: read-only; the gauges report what Redis holds, never a count a process
-- remembers.
-- KEYS: the eight slot keys (see slots_prelude)
-- ARGV: none
-- Returns: {live leases on Redis time, the stored limit or nil}
local now = now_ms()
return {redis.call('ZCOUNT', leases, '(' .. now, '+inf'), redis.call('GET', limit_key)}
