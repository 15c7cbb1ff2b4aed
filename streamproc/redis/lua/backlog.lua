#!lua flags=no-writes
-- KEYS: stream, groups registry (hash: group -> start), declarations (sorted set: group -> ms last declared), then
-- the retry set of each group named in ARGV[4..] (KEYS[3 + i] belongs to ARGV[3 + i]).
-- ARGV: orphan-after ms, the backlog limit, max entries to count, then the groups the caller declares or knows.
-- The stream's backlog: the largest, over its declared groups, of entries not yet read + read but not settled
-- (pending) + scheduled for retry. Declared: the named groups, and those the registry holds that some process
-- declared within orphan-after ms; the others (orphans) are not counted. When Redis does not know a group's lag (an
-- entry was deleted ahead of it, or it was recreated at a checkpoint), its unread entries are bounded by its read
-- counter (or the stream's length), and counted one by one only when that bound reaches the limit, up to the max.
-- Read-only (no-writes: it runs while Redis is full, too). Returns {backlog, {group, start, ...}}: the registry's
-- declared groups the caller did not name; {0, {}} when the stream does not exist.
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {0, {}} end
local time = redis.call('TIME')
local fresh_after = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000) - tonumber(ARGV[1])
local limit, count_max = tonumber(ARGV[2]), tonumber(ARGV[3])
local retry_set = {}
for i = 4, #ARGV do retry_set[ARGV[i]] = KEYS[i] end

local stream = nil
local function unread(info, room)
  if type(info['lag']) == 'number' then return info['lag'] end
  if room <= 0 then return 0 end
  if stream == nil then
    local flat = redis.call('XINFO', 'STREAM', KEYS[1])
    stream = {}
    for i = 1, #flat, 2 do stream[flat[i]] = flat[i + 1] end
  end
  local bound = stream['length']
  if type(info['entries-read']) == 'number' then
    bound = math.min(bound, stream['entries-added'] - info['entries-read'])
  end
  if bound < room then return bound end
  local n = math.min(room, count_max)
  local counted = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', n)
  if counted < n or n == room then return counted end
  return bound  -- more than the max to count: the bound stands
end

local worst, learned = 0, {}
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local name, counted = info['name'], retry_set[info['name']] ~= nil
  if not counted then
    local start = redis.call('HGET', KEYS[2], name)
    local at = redis.call('ZSCORE', KEYS[3], name)
    if start and (not at or tonumber(at) >= fresh_after) then
      counted = true
      learned[#learned + 1] = name
      learned[#learned + 1] = start
    end
  end
  if counted then
    local held = info['pending']
    if retry_set[name] then held = held + redis.call('ZCARD', retry_set[name]) end
    worst = math.max(worst, held + unread(info, limit - held))
  end
end
return {worst, learned}
