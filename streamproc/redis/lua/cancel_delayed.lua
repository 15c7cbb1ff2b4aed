#!lua flags=allow-oom
-- KEYS: delayed set, delayed entries hash, the event id's dedup marker. ARGV: event id.
-- Removes a delayed event that is still waiting; returns 1, or 0 if it is not (never scheduled, cancelled, or
-- appended already). The dedup marker it got when scheduled goes too, so that the id can be published again.
-- allow-oom: it only deletes.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[3]) == '' then redis.call('DEL', KEYS[3]) end
return 1
