#!lua flags=allow-oom
-- KEYS: delayed index, versions. ARGV: partition/due ms pairs.
-- Run by a publisher after it scheduled delayed events (and by a worker rebuilding the index): lowers each
-- partition's index score to the due (or adds it), and counts the touch in its version, so that a mover's
-- compare-and-set made from an older look (the one delayed_due.lua does first) does nothing. allow-oom: tiny bookkeeping, and
-- an event already scheduled must not be left out of the index.
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not score or tonumber(ARGV[i + 1]) < tonumber(score) then redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i]) end
  redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
end
return 1
