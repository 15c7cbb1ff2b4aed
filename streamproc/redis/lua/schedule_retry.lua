-- KEYS: stream, retry set, attempts hash. ARGV: group, entry id, source, due ms, attempts so far.
-- Pending (or leased retry) -> scheduled retry, in one step. 0 if another consumer already settled it.
-- @include release
if release(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
return 1
