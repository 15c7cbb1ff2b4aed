#!lua flags=no-writes,allow-oom
-- KEYS: the lane streams of one partition, lane 0 (most urgent) first; they share the partition's hash tag.
-- ARGV: group.
-- Returns each lane's lag for the group: entries appended that it has not read yet (what XREADGROUP ... >
-- would give), or -1 where Redis does not know it (entries deleted ahead of the group, a group set to an id),
-- or the stream or group is missing (the read that follows then fails with NOGROUP and the group is recreated).
-- Only numbers come back: the entries themselves are read by plain XREADGROUPs, because passing them through
-- Lua (RESP to Lua tables and back) cost Redis about six times the read itself.
local group = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = -1
  local groups = redis.pcall('XINFO', 'GROUPS', key)
  if not groups.err then
    for _, info in ipairs(groups) do
      local fields = {}
      for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
      if fields['name'] == group then
        if fields['lag'] then out[i] = fields['lag'] end
        break
      end
    end
  end
end
return out
