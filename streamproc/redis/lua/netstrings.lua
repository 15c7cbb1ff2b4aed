-- Shared: the strings of a packed delayed entry, written by publish/delayed.py as netstrings ("5:hello3:abc"),
-- which hold any bytes (the event's msgpack data among them).
local function netstrings(packed)
  local out, pos = {}, 1
  while pos <= #packed do
    local colon = string.find(packed, ':', pos, true)
    local size = tonumber(string.sub(packed, pos, colon - 1))
    out[#out + 1] = string.sub(packed, colon + 1, colon + size)
    pos = colon + size + 1
  end
  return out
end
