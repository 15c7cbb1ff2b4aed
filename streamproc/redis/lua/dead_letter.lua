#!lua
-- KEYS: stream, retry set, attempts hash, leases hash, retried index, dead-letter stream, starts hash.
-- ARGV: group, entry id, source ('read' or 'retry'), dlq max length, consumer, then dead-letter field/value pairs.
-- This consumer's pending entry (or leased retry) -> the group's dead-letter stream, in one step; the dead-letter
-- entry is written first, so no later failure can leave the entry nowhere. Returns its id, or nil (changing
-- nothing) if the consumer no longer holds the entry.
-- @include release
if not owns(KEYS[1], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[5]) then return false end
local dead = redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 6))
if ARGV[3] == 'retry' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
else
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HDEL', KEYS[7], ARGV[2])
end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
return dead
