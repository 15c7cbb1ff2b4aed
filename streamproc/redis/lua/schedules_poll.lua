#!lua flags=no-writes
-- KEYS: the namespace's schedules hash (keys.py: schedules_key). ARGV: none.
-- What every worker process asks once per evaluation, for all schedules in one command: Redis's clock (ticks are
-- compared across processes by it, never by a worker's clock) and every schedule's record (last fired tick and
-- event id, paused, resumed). Returns {seconds, microseconds, field, value, field, value, ...}.
local now = redis.call('TIME')
local out = {now[1], now[2]}
local record = redis.call('HGETALL', KEYS[1])
for i = 1, #record do out[#out + 1] = record[i] end
return out
