"""Lua scripts: each settles or moves an entry in one atomic call on keys of one hash slot."""

from __future__ import annotations

# KEYS: stream, dedup marker. ARGV: dedup window ms, nomkstream 1/0, then entry field/value pairs.
# Appends unless the event id was already appended within the window; returns {appended 0/1, stream id}.
# With nomkstream=1 a stream that vanished (Redis lost its data) is not recreated without its groups: the script
# returns nil and the publisher creates the groups again first (see Publisher._append_all).
PUBLISH_ONCE = """
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local id
if ARGV[2] == '1' then
  id = redis.call('XADD', KEYS[1], 'NOMKSTREAM', '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
if not id then return false end
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
"""

# Leaves the group's pending list (XACK) or the retry lease (source 'retry'); returns 1 if the entry was ours.
_RELEASE = """
local function release(stream, retry_set, group, id, source)
  if source == 'retry' then
    return redis.call('ZREM', retry_set, id)
  end
  return redis.call('XACK', stream, group, id)
end
"""

# KEYS: stream, retry set, attempts hash. ARGV: group, entry id, source, due ms, attempts so far.
# Pending (or leased retry) -> scheduled retry, in one step. 0 if another consumer already settled it.
SCHEDULE_RETRY = (
    _RELEASE
    + """
if release(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
return 1
"""
)

# KEYS: stream, retry set, attempts hash, dead-letter stream. ARGV: group, entry id, source, dlq max length,
# then dead-letter field/value pairs. Pending (or retry) -> dead-letter stream, in one step.
DEAD_LETTER = (
    _RELEASE
    + """
local released = release(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
if released == 0 then return false end
return redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
"""
)

# KEYS: retry set, attempts hash. ARGV: entry ids. A retried entry succeeded: forget its schedule and count.
RETRY_DONE = """
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return n
"""

# KEYS: retry set, attempts hash. ARGV: now ms, lease end ms, max count.
# Takes due retries: each gets a lease (its score moves to the lease end) and its attempt count goes up.
# Returns a flat list {id, attempt, id, attempt, ...}. A taker that dies lets the lease run out: it is due again.
TAKE_RETRIES = """
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
end
return out
"""

# KEYS: stream. ARGV: group, consumer, entry ids. Refreshes the lease of entries this consumer still owns
# (XCLAIM JUSTID resets idle time without counting a delivery). Returns the ids it no longer owns.
HEARTBEAT = """
local mine, lost = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then mine[#mine + 1] = ARGV[i] else lost[#lost + 1] = ARGV[i] end
end
if #mine > 0 then
  mine[#mine + 1] = 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(mine))
end
return lost
"""

# KEYS: stream. ARGV: group, own consumer name, min idle ms.
# Removes consumers that own no pending entries and were idle long enough. Never one that owns entries:
# the check and the delete are one atomic step. Returns the removed names.
DELETE_IDLE_CONSUMERS = """
local removed = {}
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return removed end
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""

# KEYS: stream. ARGV: policy min id ('0-0' = none), max length (0 = none), max entries to inspect for the
# length policy, the key prefix of this partition's retry sets (the group name completes it; same hash tag).
# Trims below the oldest entry any group still needs (pending, unread, or scheduled for retry) and below
# the retention policy, whichever is lower. Returns {entries trimmed, the min id used}.
TRIM = """
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
"""

# KEYS: stream. ARGV: group, start id if the stream already exists ('$' only new events, '0' all retained).
# Creates the group; on a stream that does not exist yet it starts at the beginning, so no event appended
# after this call can be missed. The existence check and the create are one step. 1 if created, 0 if it existed.
ENSURE_GROUP = """
local start = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then start = '0' end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM')
if ok then return 1 end
local text = type(err) == 'table' and err.err or tostring(err)
if string.find(text, 'BUSYGROUP', 1, true) then return 0 end
return redis.error_reply(text)
"""
