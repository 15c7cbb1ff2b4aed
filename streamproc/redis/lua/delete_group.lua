#!lua flags=allow-oom
-- KEYS: stream, groups registry, declarations, checkpoints, and the group's retry set, attempts hash, leases hash
-- and retried index. ARGV: group, undeclared-for ms.
-- Deletes an orphan consumer group and its bookkeeping (its dead-letter stream stays), unless the registry holds it
-- and a process declared it within the last undeclared-for ms (or never said when): a worker that started since
-- the caller looked keeps its group. The check and the delete are one step. Returns 1 if deleted, 0 if kept.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  local at = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if not at or tonumber(at) >= now - tonumber(ARGV[2]) then return 0 end
end
pcall(redis.call, 'XGROUP', 'DESTROY', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7], KEYS[8])
return 1
