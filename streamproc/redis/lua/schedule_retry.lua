#!lua
-- KEYS: stream, retry set, attempts hash, leases hash, retried index, starts hash.
-- ARGV: group, entry id, source ('read' or 'retry'), delay ms, attempts so far, consumer.
-- This consumer's pending entry (or leased retry) -> scheduled retry for this group only, due at Redis's clock
-- plus the delay, in one step. Returns 0 (and changes nothing) if the consumer no longer holds the entry.
-- No allow-oom flag: at maxmemory Redis refuses the whole call before any of it runs, and the entry stays pending.
-- @include release
if not owns(KEYS[1], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[6]) then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[5], entry_ms(ARGV[2]), ARGV[2])
if ARGV[3] == 'retry' then
  redis.call('HDEL', KEYS[4], ARGV[2])
else
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[6], ARGV[2])
end
return 1
