-- slots_pause: no slot is granted to anyone until pause_ms from now (Redis time): the fleet's
-- cooldown after a 429 (rate.cooldown_after_429). Waiters keep their place in line and are
-- served in arrival order when it ends; a pause never shortens one already in force.
-- KEYS: those named in SLOT_KEYS, in that order (see lib/slots.lua); the pause lives in the adaptive hash
-- ARGV: 1 pause_ms
-- Returns: when the pause ends (ms, Redis time)
local SLOT_KEYS = {'adaptive'}
--- @include "slots"
local now = now_ms()
local ends = now + tonumber(ARGV[1])
local held = tonumber(redis.call('HGET', adaptive, 'paused_until_ms') or '0')
if held > ends then ends = held end
redis.call('HSET', adaptive, 'paused_until_ms', ends)
if touch_due(adaptive) then touch(adaptive) end
return ends
