#!lua
-- KEYS: delayed set, delayed entries hash, then one dedup marker per event (used only for producer-given ids).
-- ARGV: max delayed (0: no limit), dedup window ms, n, then per event: event id, 'in' or 'at', ms (a delay from
-- Redis's now, or an epoch time), dedup 1/0, the packed entry (publish/delayed.py).
-- Schedules the delayed events of one partition, all or none: if the store would pass max delayed, nothing is
-- written and {'full', size} is returned. Else, per event, {'scheduled', due ms}, or (not scheduled again)
-- {'waiting', due ms} if its id is scheduled already, or {'appended', stream id} if the id was appended within the
-- dedup window ('' if it was appended by a mover: the marker of a delayed id has no entry id).
-- A producer-given id gets its dedup marker now, so that a plain publish of it while it waits is a no-op too; the
-- marker lives until the dedup window after the due time. Due times are Redis's clock (TIME), never a caller's.
-- No allow-oom flag: at maxmemory Redis refuses the whole call before any write.
-- @include release
local now = now_ms()
local limit, window, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if limit > 0 then
  local size = redis.call('ZCARD', KEYS[1])
  if size + n > limit then return {'full', size} end
end
local out = {}
for i = 0, n - 1 do
  local at = 4 + i * 5
  local id, mode, ms, dedup, packed = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3], ARGV[at + 4]
  local due = ms
  if mode == 'in' then due = now + ms end
  local waiting = redis.call('ZSCORE', KEYS[1], id)
  local seen = dedup == '1' and redis.call('GET', KEYS[3 + i])
  if waiting then
    out[#out + 1] = {'waiting', waiting}
  elseif seen then
    out[#out + 1] = {'appended', seen}
  else
    redis.call('ZADD', KEYS[1], due, id)
    redis.call('HSET', KEYS[2], id, packed)
    if dedup == '1' then redis.call('SET', KEYS[3 + i], '', 'PX', math.max(due - now, 0) + window) end
    out[#out + 1] = {'scheduled', tostring(due)}
  end
end
return out
