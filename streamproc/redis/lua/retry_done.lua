-- KEYS: retry set, attempts hash. ARGV: entry ids. A retried entry succeeded: forget its schedule and count.
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return n
