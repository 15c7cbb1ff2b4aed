-- KEYS: a group's retry set (entry id -> due ms), its leases hash (entry id -> consumer holding a taken retry).
-- ARGV: none. Makes every scheduled retry that no consumer holds due now, by Redis's clock, so that a test's
-- drain() need not wait out backoff delays; retries taken already (leased) are left alone. Returns how many.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 then
    redis.call('ZADD', KEYS[1], now, id)
    n = n + 1
  end
end
return n
