#!lua flags=no-writes
-- KEYS: delayed index (sorted set: partition -> at most its earliest due ms), versions (hash: partition -> touches).
-- ARGV: max partitions.
-- What a mover polls: by Redis's clock, the partitions with something due and the version of each (for the
-- compare-and-set of delayed_reindex.lua), and the earliest due in the future. One call, whatever the number of
-- partitions. Returns {now ms, next due ms or '', {partition, score, version, ...}}.
-- @include release
local now = now_ms()
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]), 'WITHSCORES')
local out = {}
for i = 1, #due, 2 do
  out[#out + 1] = due[i]
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], due[i]) or '0'
end
local later = redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
return {now, later[2] or '', out}
