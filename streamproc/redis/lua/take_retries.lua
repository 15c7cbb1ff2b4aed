#!lua
-- KEYS: retry set, attempts hash, leases hash. ARGV: lease ms, max count, consumer.
-- Takes retries due by Redis's clock: each is leased to the consumer (its score moves to the lease end, the
-- leases hash names the holder) and its attempt count goes up. Returns a flat list {id, attempt, id, attempt,
-- ...}. A taker that dies lets the lease run out: the entry is due again. No allow-oom: at maxmemory no retry is
-- taken (taking one writes).
-- @include release
local now = now_ms()
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
  redis.call('HSET', KEYS[3], id, ARGV[3])
  out[#out + 1] = id
  out[#out + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
end
return out
