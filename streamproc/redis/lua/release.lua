-- Leaves the group's pending list (XACK) or the retry lease (source 'retry'); returns 1 if the entry was ours.
local function release(stream, retry_set, group, id, source)
  if source == 'retry' then
    return redis.call('ZREM', retry_set, id)
  end
  return redis.call('XACK', stream, group, id)
end
