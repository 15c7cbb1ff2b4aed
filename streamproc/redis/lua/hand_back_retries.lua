#!lua flags=allow-oom
-- KEYS: retry set, attempts hash, leases hash. ARGV: consumer, entry ids.
-- Gives due retries this consumer took but will not start back: due again now (by Redis's clock), the attempt
-- counted when taken uncounted, the lease released. Retries leased to another consumer meanwhile are left alone.
-- Returns how many were handed back.
-- @include release
local now = now_ms()
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
    redis.call('HINCRBY', KEYS[2], ARGV[i], -1)
    redis.call('HDEL', KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
