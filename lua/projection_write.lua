-- projection_write: stores one org's projections, fenced, as one field per project:
--   <project_id> -> {"run_id","fencing_token","first_hour","spike_threshold","hourly":[24 numbers]}
-- The write is refused whole if any of its projects holds a projection from a later run
-- (first_hour), or from the same run under a newer lease (fencing token; 0 = no slot, the legacy
-- path, which cannot be fenced): one read (HMGET) and one check per project, not per hour.
-- Fields of projects this write does not carry are dropped once their projection is older than
-- prune_before, and fields of the earlier per-hour layout (<project>:<hour>) at the first write
-- after an upgrade; neither is looked for unless the hash holds more fields than the whole write.
-- A large org is written in several calls (chunks of at most a few thousand fields: `unpack`
-- holds about 8,000 values); only the last looks for fields to prune.
-- KEYS: 1 projections (hash per org)
-- ARGV: 1 first_hour (unix s), 2 fencing token, 3 ttl_ms, 4 prune_before (unix s),
--       5 projects in the whole write (all chunks), 6 1 if this is the write's last chunk,
--       7.. project/value pairs
-- Returns: {written (0|1), stored_first_hour, stored_token}; the stored pair names the newer
--          write that refused this one (0, 0 when written).
local projections = KEYS[1]
local first_hour, token = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl_ms, prune_before = ARGV[3], tonumber(ARGV[4])

local function header(value)
  local ok, stored = pcall(cjson.decode, value)
  if ok and type(stored) == 'table' then
    return tonumber(stored.first_hour) or 0, tonumber(stored.fencing_token) or 0
  end
  return 0, 0
end

local total, last = tonumber(ARGV[5]), ARGV[6] == '1'
local written, fields = {}, {}
for i = 7, #ARGV, 2 do
  written[ARGV[i]] = true
  fields[#fields + 1] = ARGV[i]
end
-- One read for every project of the write, one staleness check per project.
for _, old in ipairs(redis.call('HMGET', projections, unpack(fields))) do
  if old then
    local h, t = header(old)
    if h > first_hour or (h == first_hour and token > 0 and t > token) then
      return {0, h, t}
    end
  end
end
redis.call('HSET', projections, unpack(ARGV, 7))
if last and redis.call('HLEN', projections) > total then
  for _, f in ipairs(redis.call('HKEYS', projections)) do
    if not written[f] then
      local stale = string.find(f, ':', 1, true) ~= nil
      if not stale then
        local h = header(redis.call('HGET', projections, f))
        stale = h < prune_before
      end
      if stale then redis.call('HDEL', projections, f) end
    end
  end
end
redis.call('PEXPIRE', projections, ttl_ms)
return {1, 0, 0}
