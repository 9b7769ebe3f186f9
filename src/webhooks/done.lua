-- ARGV: prefix, cap, group, ids... Acknowledges delivered (or dropped) events and deletes them,
-- so the stream's length is what is still undelivered.
local ids = {}
for i = 4, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
redis.call('XACK', KEYS[1], ARGV[3], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
