#!lua flags=allow-oom
-- KEYS: stream, groups registry (hash: group -> start option), declarations (sorted set: group -> ms it was last
-- declared), checkpoints (hash: group -> id to recreate it at).
-- ARGV: orphan-after ms, refresh-after ms, max entries to count, mode ('declare', or 'recover' after a NOGROUP), n,
-- then n group/start pairs this app declares on the stream, then group/start pairs it learned from the registry
-- before (used only when the stream does not exist: Redis lost its data, and the registry with it).
-- Registers this app's groups the registry lacks (and refreshes their declaration time when it is older than
-- refresh-after ms), then creates every declared group missing from the stream (this
-- app's, and the registry's that some process declared within orphan-after ms), each where it must start:
--   'fresh'       no stream: at its start (everything appended from now on is new to every group)
--   'checkpoint'  the group vanished while the stream did not: at its recorded checkpoint
--   'lost'        recovering a group that has no checkpoint either (lost with Redis's data): at the stream's start
--   'new', 'all'  a group new to a stream with history: after its last entry, or at its start
-- Writes nothing when every group exists and is registered (and declared lately). allow-oom: it only writes tiny bookkeeping, and a worker
-- must be able to start while Redis is at maxmemory.
-- Returns {{group, how, id, entries after id (counted up to the max), ...}, {group, start, ...}: the declared groups}.
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local exists = redis.call('EXISTS', KEYS[1]) == 1
local registry, order, start_of = {}, {}, {}
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do registry[flat[i]] = flat[i + 1] end
local function want(group, start)
  if start_of[group] == nil then
    order[#order + 1] = group
    start_of[group] = start
  end
end
local function declare(group, start)
  if registry[group] == nil then
    redis.call('HSET', KEYS[2], group, start)
    redis.call('ZADD', KEYS[3], now, group)
    registry[group] = start
  else
    local at = redis.call('ZSCORE', KEYS[3], group)
    if at and tonumber(at) < now - tonumber(ARGV[2]) then redis.call('ZADD', KEYS[3], now, group) end
  end
  want(group, registry[group])
end
local own_end = 5 + 2 * tonumber(ARGV[5])
for i = 6, own_end, 2 do declare(ARGV[i], ARGV[i + 1]) end
if not exists then
  for i = own_end + 1, #ARGV, 2 do declare(ARGV[i], ARGV[i + 1]) end
end
local fresh_after = now - tonumber(ARGV[1])
for i = 1, #flat, 2 do
  local at = redis.call('ZSCORE', KEYS[3], flat[i])
  if not at or tonumber(at) >= fresh_after then want(flat[i], flat[i + 1]) end
end

local have = {}
if exists then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    for i = 1, #g, 2 do if g[i] == 'name' then have[g[i + 1]] = true end end
  end
end
local function last_id()
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do if info[i] == 'last-generated-id' then return info[i + 1] end end
end
local function position(group)
  if not exists then return 'fresh', '0-0' end
  local checkpoint = redis.call('HGET', KEYS[4], group)
  if checkpoint then return 'checkpoint', checkpoint end
  if ARGV[4] == 'recover' then return 'lost', '0-0' end
  if start_of[group] == 'all' then return 'all', '0-0' end
  return 'new', last_id()
end
local created, declared = {}, {}
for _, group in ipairs(order) do
  declared[#declared + 1] = group
  declared[#declared + 1] = start_of[group]
  if not have[group] then
    local how, at = position(group)
    redis.call('XGROUP', 'CREATE', KEYS[1], group, at, 'MKSTREAM')
    redis.call('HSET', KEYS[4], group, at)
    local after = 0
    if how == 'checkpoint' then
      after = #redis.call('XRANGE', KEYS[1], '(' .. at, '+', 'COUNT', tonumber(ARGV[3]))
    end
    for _, x in ipairs({group, how, at, after}) do created[#created + 1] = x end
  end
end
return {created, declared}
