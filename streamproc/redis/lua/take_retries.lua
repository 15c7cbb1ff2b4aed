-- KEYS: retry set, attempts hash. ARGV: now ms, lease end ms, max count.
-- Takes due retries: each gets a lease (its score moves to the lease end) and its attempt count goes up.
-- Returns a flat list {id, attempt, id, attempt, ...}. A taker that dies lets the lease run out: it is due again.
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
end
return out
