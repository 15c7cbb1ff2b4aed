-- KEYS: the namespace's schedules hash. ARGV: schedule name, tick (ms), its first event id ('' if none), how many
-- events the tick published.
-- Records that the schedule fired the tick, unless the same or a later tick is recorded already (processes record
-- in any order: the last fired tick only moves forward), with Redis's time of the record. Returns 1 if recorded.
local field = ARGV[1] .. ':fired_tick'
local last = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
if last >= tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], field, ARGV[2], ARGV[1] .. ':fired_event_id', ARGV[3], ARGV[1] .. ':fired_events',
  ARGV[4], ARGV[1] .. ':fired_at', string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)))
return 1
