-- KEYS: stream. ARGV: group, start id if the stream already exists ('$' only new events, '0' all retained).
-- Creates the group; on a stream that does not exist yet it starts at the beginning, so no event appended
-- after this call can be missed. The existence check and the create are one step. 1 if created, 0 if it existed.
local start = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then start = '0' end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM')
if ok then return 1 end
local text = type(err) == 'table' and err.err or tostring(err)
if string.find(text, 'BUSYGROUP', 1, true) then return 0 end
return redis.error_reply(text)
