#!lua
-- KEYS: delayed set, delayed entries hash, then the streams of the partition (its lanes' streams, if it has lanes).
-- ARGV: max count, nomkstream 1/0.
-- Moves up to max count delayed events that are due by Redis's clock to their streams, in due order: each is
-- appended (XADD, its fields as stored) and removed from the store in the same atomic call, so however many
-- processes move the same partition, each event is appended once. Stops before an event whose stream is not in
-- KEYS ('unknown': the caller passes it next time) or, with nomkstream, whose stream vanished ('missing': Redis
-- lost it; the caller creates its groups first, so that the stream is never made again without them).
-- Returns {moved, 'done'|'unknown'|'missing', the stream concerned or '', the earliest due left or ''}.
-- No allow-oom flag: appending adds data; at maxmemory the events wait in the store.
-- @include release
-- @include netstrings
local now = now_ms()
local streams = {}
for i = 3, #KEYS do streams[KEYS[i]] = true end
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
local moved, state, stream = 0, 'done', ''
for _, id in ipairs(ids) do
  local packed = redis.call('HGET', KEYS[2], id)
  if packed then
    local entry = netstrings(packed)
    if not streams[entry[1]] then
      state, stream = 'unknown', entry[1]
      break
    end
    local added
    if ARGV[2] == '1' then
      added = redis.call('XADD', entry[1], 'NOMKSTREAM', '*', unpack(entry, 2))
    else
      added = redis.call('XADD', entry[1], '*', unpack(entry, 2))
    end
    if not added then
      state, stream = 'missing', entry[1]
      break
    end
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {moved, state, stream, first[2] or ''}
