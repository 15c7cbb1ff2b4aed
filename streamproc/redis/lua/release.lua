-- Shared by the settle scripts. A consumer settles only what it still holds: an entry it read or claimed is in
-- the group's pending list under its name; a due retry it took is leased to it (leases hash: id -> consumer).
-- Another consumer may have reclaimed the entry meanwhile (our lease ran out); then it is theirs to settle.
local function owns(stream, leases, group, id, source, consumer)
  if source == 'retry' then
    return redis.call('HGET', leases, id) == consumer
  end
  return #redis.call('XPENDING', stream, group, id, id, 1, consumer) > 0
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The millisecond part of a stream entry id, the score of the retried index (trimming reads its minimum).
local function entry_ms(id)
  return string.match(id, '^(%d+)')
end
