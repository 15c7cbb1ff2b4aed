#!lua flags=allow-oom
-- KEYS: retry set, attempts hash, leases hash, retried index. ARGV: entry ids.
-- Retried entries succeeded (or were deleted from the stream): forget their schedule, count and lease. Success
-- is final whoever holds the lease now, so this checks no owner. It only deletes, so it runs at maxmemory too.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[4], ARGV[i])
end
return n
