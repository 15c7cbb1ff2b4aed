-- KEYS: stream, retry set, attempts hash, dead-letter stream. ARGV: group, entry id, source, dlq max length,
-- then dead-letter field/value pairs. Pending (or retry) -> dead-letter stream, in one step.
-- @include release
local released = release(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[2])
if released == 0 then return false end
return redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
