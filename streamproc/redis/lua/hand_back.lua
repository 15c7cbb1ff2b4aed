#!lua flags=allow-oom
-- KEYS: stream. ARGV: group, consumer, idle ms, then (entry id, delivery count) pairs.
-- Gives pending entries this consumer holds but will not start back to the group: XCLAIM with a huge idle time
-- makes any consumer's XAUTOCLAIM take them at once. RETRYCOUNT keeps the count at what it was before this
-- consumer's delivery (it never ran here; the next claim counts one). Entries another consumer took meanwhile
-- are left alone. Returns how many were handed back.
local n = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    n = n + 1
  end
end
return n
