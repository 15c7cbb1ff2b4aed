-- KEYS: a partition's delayed set (event id -> due ms). ARGV: none.
-- Makes every delayed event of the partition due now, by Redis's clock, so that a test's drain() need not wait out
-- their delays. Returns now (ms) if it moved any due time (the caller then lowers the index to it), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local later = redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')
for _, id in ipairs(later) do redis.call('ZADD', KEYS[1], now, id) end
if #later > 0 then return now end
return 0
