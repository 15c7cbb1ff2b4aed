-- KEYS: stream, dedup marker. ARGV: dedup window ms, nomkstream 1/0, then entry field/value pairs.
-- Appends unless the event id was already appended within the window; returns {appended 0/1, stream id}.
-- With nomkstream=1 a stream that vanished (Redis lost its data) is not recreated without its groups: the script
-- returns nil and the publisher creates the groups again first (see Publisher._append_all).
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local id
if ARGV[2] == '1' then
  id = redis.call('XADD', KEYS[1], 'NOMKSTREAM', '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
if not id then return false end
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {1, id}
