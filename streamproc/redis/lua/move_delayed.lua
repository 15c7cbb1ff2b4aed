#!lua
-- KEYS: delayed set, delayed entries hash, dead stream (entries that cannot be appended), then the streams of the
-- partition (its lanes' streams, if it has lanes).
-- ARGV: max count, nomkstream 1/0, the partition's hash tag ("{card.added:3}").
-- Moves up to max count delayed events that are due by Redis's clock to their streams, in due order: each is
-- appended (XADD, its fields as stored) and removed from the store in the same atomic call, so however many
-- processes move the same partition, each event is appended once. Stops before an event whose stream is not in
-- KEYS but in the partition's slot ('unknown': the caller passes it next time) or, with nomkstream, whose stream
-- vanished ('missing': Redis lost it; the caller creates its groups first, so that the stream is never made again
-- without them).
-- An entry that can never be appended (unreadable, an odd or empty field list, a stream of another slot, or an
-- XADD that fails: WRONGTYPE on the stream key...) is moved to the dead stream with its reason, in the same call:
-- it must not fail the script (the mover would stop, on every worker) nor block the entries behind it.
-- Returns {moved, 'done'|'unknown'|'missing', the stream concerned or '', the earliest due left or '', dead, the
-- first dead entry's reason or ''}.
-- No allow-oom flag: appending adds data; at maxmemory the events wait in the store.
-- @include release
-- @include netstrings
local now = now_ms()
local streams = {}
for i = 4, #KEYS do streams[KEYS[i]] = true end
local tag = ARGV[3]

-- Why this entry can never be appended, or nil.
local function unfit(ok, entry)
  if not ok or #entry < 1 then return 'unreadable entry' end
  if #entry < 3 or #entry % 2 ~= 1 then return 'odd or empty field list (' .. (#entry - 1) .. ' strings)' end
  if not string.find(entry[1], tag, 1, true) then return 'stream ' .. entry[1] .. ' is in another slot' end
  return nil
end

local function append(entry)
  if ARGV[2] == '1' then return redis.call('XADD', entry[1], 'NOMKSTREAM', '*', unpack(entry, 2)) end
  return redis.call('XADD', entry[1], '*', unpack(entry, 2))
end

local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local moved, state, stream, dead, reason = 0, 'done', '', 0, ''
for i = 1, #ids, 2 do
  local id = ids[i]
  local packed = redis.call('HGET', KEYS[2], id)
  if packed then
    local ok, entry = pcall(netstrings, packed)
    local why = unfit(ok, entry)
    local added
    if not why then
      if not streams[entry[1]] then
        state, stream = 'unknown', entry[1]
        break
      end
      ok, added = pcall(append, entry)
      if not ok then
        why = 'XADD failed: ' .. tostring(added.err or added)
      elseif not added then
        state, stream = 'missing', entry[1]
        break
      end
    end
    if why then
      redis.call('XADD', KEYS[3], '*', 'event_id', id, 'due', ids[i + 1], 'reason', why, 'entry', packed)
      dead = dead + 1
      if reason == '' then reason = why end
    else
      moved = moved + 1
    end
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, state, stream, first[2] or '', dead, reason}
