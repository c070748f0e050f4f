-- projection_write: stores one org's projections, fenced. The write is refused whole if any of
-- its hours holds a projection from a later run (first_hour), or from the same run under a newer
-- lease (fencing token; 0 = no slot, the legacy path, which cannot be fenced). Hours older than
-- prune_before are deleted.
-- KEYS: 1 projections (hash per org, field <project>:<hour unix s> -> projection JSON)
-- ARGV: 1 first_hour (unix s), 2 fencing token, 3 ttl_ms, 4 prune_before (unix s),
--       5.. field/value pairs
-- Returns: {written (0|1), stored_first_hour, stored_token}; the stored pair names the newer
--          write that refused this one (0, 0 when written).
local projections = KEYS[1]
local first_hour, token = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl_ms, prune_before = ARGV[3], tonumber(ARGV[4])
for i = 5, #ARGV, 2 do
  local old = redis.call('HGET', projections, ARGV[i])
  if old then
    local ok, stored = pcall(cjson.decode, old)
    if ok and type(stored) == 'table' then
      local h, t = tonumber(stored.first_hour) or 0, tonumber(stored.fencing_token) or 0
      if h > first_hour or (h == first_hour and token > 0 and t > token) then
        return {0, h, t}
      end
    end
  end
end
for i = 5, #ARGV, 2 do redis.call('HSET', projections, ARGV[i], ARGV[i + 1]) end
for _, f in ipairs(redis.call('HKEYS', projections)) do
  local hour = tonumber(string.match(f, ':(%d+)$'))
  if hour and hour < prune_before then redis.call('HDEL', projections, f) end
end
redis.call('PEXPIRE', projections, ttl_ms)
return {1, 0, 0}
