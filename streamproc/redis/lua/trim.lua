#!lua flags=allow-oom
-- KEYS: stream, groups registry (hash), declarations (sorted set: group -> ms last declared), checkpoints (hash),
-- trim lock, then the retried set (entry id -> its ms time, for entries in retry) of each group named in ARGV[8..].
-- ARGV: retention ms (fully acked entries older than this by Redis's clock go), max length (0 = none), max entries
-- to inspect for the length policy, lock owner ('' = a one-off trim: no lock), lock ms, orphan-after ms, n, then
-- group names: the first n are the groups this app declares on the stream, the others are groups the caller knows
-- the registry declares (KEYS[5 + i] belongs to ARGV[7 + i]).
-- Refreshes this app's declarations, then, unless another process holds the lock (one trims a stream at a time):
-- records each declared group's checkpoint (the id it is recreated at if it vanishes: just before the first entry it
-- still needs) and trims below the oldest entry any declared group still needs (pending, unread, or scheduled for
-- retry) and below the retention policy, whichever is lower. Groups no app declares (orphans) hold nothing back.
-- Reads O(groups) small things, never a whole retry set. allow-oom: trimming is how a full Redis gets memory back.
-- Returns {entries trimmed, the min id used, state, names...}; state 'trimmed' (names: the orphan groups),
-- 'locked', 'missing' (no stream), or 'unknown' (names: declared groups the caller did not pass; nothing was done).
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function less(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local SAME_MS_LIMIT = 100
local function fmt(a) return string.format('%d-%d', a[1], a[2]) end
local function before(a)  -- the id just before a, where a group must be created to read a next
  if a[2] > 0 then return fmt({a[1], a[2] - 1}) end
  if a[1] == 0 then return '0-0' end
  return string.format('%d-18446744073709551615', a[1] - 1)
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local retried, own = {}, {}
for i = 8, #ARGV do retried[ARGV[i]] = KEYS[i - 2] end
for i = 8, 7 + tonumber(ARGV[7]) do
  own[ARGV[i]] = true
  redis.call('ZADD', KEYS[3], now, ARGV[i])
end
if ARGV[4] ~= '' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[4] then return {0, '', 'locked'} end
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {0, '', 'missing'} end
if ARGV[4] ~= '' then redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5]) end

local fresh_after = now - tonumber(ARGV[6])
local function declared(name)
  if own[name] then return true end
  if redis.call('HEXISTS', KEYS[2], name) == 0 then return false end
  local at = redis.call('ZSCORE', KEYS[3], name)
  return not at or tonumber(at) >= fresh_after
end
local infos, orphans, unknown = {}, {}, {}
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if not declared(info['name']) then orphans[#orphans + 1] = info['name']
  elseif not retried[info['name']] then unknown[#unknown + 1] = info['name']
  else infos[#infos + 1] = info end
end
if #unknown > 0 then return {0, '', 'unknown', unpack(unknown)} end

local safe = nil
local function need(id) if safe == nil or less(id, safe) then safe = id end end
for _, info in ipairs(infos) do
  local first
  if info['pending'] > 0 then
    first = parse(redis.call('XPENDING', KEYS[1], info['name'])[2])
  else
    local last = parse(info['last-delivered-id'])
    first = {last[1], last[2] + 1}
  end
  need(first)
  local checkpoint = before(first)
  if redis.call('HGET', KEYS[4], info['name']) ~= checkpoint then
    redis.call('HSET', KEYS[4], info['name'], checkpoint)
  end
  -- The oldest retry's millisecond, then its entries (to trim exactly below the first; if a millisecond holds too
  -- many to read, below the millisecond).
  local index = retried[info['name']]
  local oldest = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  if #oldest > 0 then
    local same = redis.call('ZRANGE', index, oldest[2], oldest[2], 'BYSCORE', 'LIMIT', 0, SAME_MS_LIMIT)
    if #same < SAME_MS_LIMIT then
      for _, id in ipairs(same) do need(parse(id)) end
    else
      need({tonumber(oldest[2]), 0})
    end
  end
end
local policy = {math.max(0, now - tonumber(ARGV[1])), 0}
local maxlen = tonumber(ARGV[2])
local len = redis.call('XLEN', KEYS[1])
if maxlen > 0 and len > maxlen then
  local over = math.min(len - maxlen, tonumber(ARGV[3]))
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
  local last = parse(head[#head][1])
  local bound = {last[1], last[2] + 1}
  if less(policy, bound) then policy = bound end
end
-- A stream no declared group reads (safe == nil) is trimmed by the policy alone.
local target = policy
if safe ~= nil and less(safe, policy) then target = safe end
return {redis.call('XTRIM', KEYS[1], 'MINID', '=', fmt(target)), fmt(target), 'trimmed', unpack(orphans)}
