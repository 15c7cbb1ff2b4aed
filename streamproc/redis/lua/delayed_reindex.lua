#!lua flags=allow-oom
-- KEYS: delayed index, versions. ARGV: partition, the version the mover saw when it polled, the partition's
-- earliest due left after its move ('' if none).
-- The mover's compare-and-set: sets the partition's index score to its earliest due (removes it when nothing is
-- left) only if no publisher touched it since the poll; otherwise a touch came after the move may have seen, and
-- the index keeps the lower score it has. Returns 1 if it set it. allow-oom: it only removes or moves a score.
if (redis.call('HGET', KEYS[2], ARGV[1]) or '0') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
