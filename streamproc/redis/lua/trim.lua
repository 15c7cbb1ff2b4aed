-- KEYS: stream. ARGV: policy min id ('0-0' = none), max length (0 = none), max entries to inspect for the
-- length policy, the key prefix of this partition's retry sets (the group name completes it; same hash tag).
-- Trims below the oldest entry any group still needs (pending, unread, or scheduled for retry) and below
-- the retention policy, whichever is lower. Returns {entries trimmed, the min id used}.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function less(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local function fmt(a) return string.format('%d-%d', a[1], a[2]) end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return {0, ''} end
local safe = nil
local function need(id) if safe == nil or less(id, safe) then safe = id end end
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['pending'] > 0 then
    need(parse(redis.call('XPENDING', KEYS[1], info['name'])[2]))
  else
    local last = parse(info['last-delivered-id'])
    need({last[1], last[2] + 1})
  end
end
for _, g in ipairs(groups) do
  local name
  for i = 1, #g, 2 do if g[i] == 'name' then name = g[i + 1] end end
  for _, id in ipairs(redis.call('ZRANGE', ARGV[4] .. name, 0, -1)) do need(parse(id)) end
end
local policy = parse(ARGV[1])
local maxlen = tonumber(ARGV[2])
local len = redis.call('XLEN', KEYS[1])
if maxlen > 0 and len > maxlen then
  local over = math.min(len - maxlen, tonumber(ARGV[3]))
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
  local last = parse(head[#head][1])
  local bound = {last[1], last[2] + 1}
  if less(policy, bound) then policy = bound end
end
-- A stream no group reads (safe == nil) is trimmed by the policy alone.
local target = policy
if safe ~= nil and less(safe, policy) then target = safe end
return {redis.call('XTRIM', KEYS[1], 'MINID', '=', fmt(target)), fmt(target)}
