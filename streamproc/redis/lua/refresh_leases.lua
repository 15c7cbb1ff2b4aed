#!lua flags=allow-oom
-- KEYS: retry set, leases hash. ARGV: lease ms, consumer, entry ids.
-- Heartbeat of the due retries a consumer runs: moves the lease end of those still leased to it to Redis's clock
-- plus the lease. A retry settled meanwhile is no longer leased, so a heartbeat that arrives after a short retry
-- was scheduled cannot stretch it. Returns the ids the consumer no longer holds.
-- @include release
local lease_end = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', lease_end, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
