-- ARGV: prefix, cap, group, count of ids, ids..., then (due ms, fields as a JSON array) for each
-- retry. Schedules the retries and acknowledges and deletes the events in one step, so an event
-- is either pending, waiting to retry or gone.
local n = tonumber(ARGV[4])
local ids = {}
for i = 5, 4 + n do
  ids[#ids + 1] = ARGV[i]
end
for i = 5 + n, #ARGV, 2 do
  -- A retry already scheduled (this call repeated after a timeout) is not counted twice.
  local added = redis.call('ZADD', P .. 'retry', ARGV[i], ARGV[i + 1])
  local ok, fields = pcall(cjson.decode, ARGV[i + 1])
  if added == 1 and ok and type(fields) == 'table' then
    local app = app_of(fields)
    if app then
      redis.call('HINCRBY', P .. 'depth', app, 1)
    end
  end
end
for _, id in ipairs(ids) do
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  if entry then
    gone(app_of(entry[2]))
  end
end
if n > 0 then
  -- A Redis that lost its data lost the group too: the events are gone, the retries stand.
  redis.pcall('XACK', KEYS[1], ARGV[3], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return n
