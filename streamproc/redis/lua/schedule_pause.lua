-- KEYS: the namespace's schedules hash. ARGV: schedule name, 'pause' or 'resume'.
-- pause: records when it began (Redis's time), unless the schedule is paused already. resume: forgets the pause
-- and records when it ended, so that no process catches up the ticks the pause covered. Returns 1 if the state
-- changed, 0 if it was so already.
local paused = ARGV[1] .. ':paused_at'
local t = redis.call('TIME')
local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
if ARGV[2] == 'pause' then
  return redis.call('HSETNX', KEYS[1], paused, now)
end
if redis.call('HDEL', KEYS[1], paused) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':resumed_at', now)
return 1
