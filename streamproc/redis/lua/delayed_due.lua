#!lua flags=allow-oom
-- KEYS: delayed index (sorted set: partition -> at most its earliest due ms), versions (hash: partition -> touches).
-- ARGV: max partitions, n, then n triples of what the mover's last moves left: partition, the version it polled,
-- the partition's earliest due left ('' if none).
-- A mover's poll, one call whatever the number of partitions. First the compare-and-set of its last moves: each
-- partition's score is set to its earliest due left (removed if none) only if no publisher touched it since the
-- poll those moves came from; otherwise a touch came after what the move could see, and the index keeps the
-- lower score it has. Then, by Redis's clock, the partitions with something due, each with its version, and the
-- earliest due in the future. Returns {now ms, next due ms or '', {partition, score, version, ...}}.
-- allow-oom: it only removes or moves scores.
-- @include release
for i = 3, 2 + 3 * tonumber(ARGV[2]), 3 do
  if (redis.call('HGET', KEYS[2], ARGV[i]) or '0') == ARGV[i + 1] then
    if ARGV[i + 2] == '' then
      redis.call('ZREM', KEYS[1], ARGV[i])
    else
      redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i])
    end
  end
end
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
