#!lua flags=allow-oom
-- KEYS: the lane streams of one partition, lane 0 (most urgent) first; they share the partition's hash tag.
-- ARGV: group, consumer, count (new entries to read in all), then one reserve per lane (its floor share: read
--       for it first, so that a lane with a backlog is never starved; 0 for lane 0).
-- Reads new entries (XREADGROUP ... >, non-blocking: scripts cannot block) for the group: first each lower
-- lane's reserve (lane 1 first, never more than `count` in all), then whatever is left of `count` from the most
-- urgent lane down. Returns one list of entries ({id, {field, value, ...}}) per lane, in lane order ({} for a
-- lane that gave none). allow-oom: at maxmemory a read must still go through, as a plain XREADGROUP does (it
-- adds only pending-list entries), or nothing would drain.
local group, consumer = ARGV[1], ARGV[2]
local left = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do out[i] = {} end

local function read(i, n)
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', KEYS[i], '>')
  if not reply then return 0 end
  local lane = out[i]
  for _, entry in ipairs(reply[1][2]) do lane[#lane + 1] = entry end
  return #reply[1][2]
end

for i = 2, #KEYS do
  local n = math.min(tonumber(ARGV[3 + i]), left)
  if n > 0 then left = left - read(i, n) end
end
for i = 1, #KEYS do
  if left <= 0 then break end
  left = left - read(i, left)
end
return out
