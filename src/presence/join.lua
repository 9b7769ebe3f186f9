-- KEYS: entries, users, meta. ARGV: field, member JSON, max users, channel, publish command.
-- Returns {0} when the channel is full, else {1, epoch, ver, [member JSON...], edge}: edge 1 when
-- this join added the user's first entry.
local edge = 0
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local user = user_of(ARGV[1])
  local count = redis.call('HINCRBY', KEYS[2], user, 1)
  if count == 1 and redis.call('HLEN', KEYS[2]) > tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[2], user)
    tidy()
    return {0}
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  local epoch, ver = bump(KEYS[3])
  announce(ARGV[4], ARGV[5], 'join', count == 1, epoch, ver, ARGV[2])
  if count == 1 then
    edge = 1
  end
end
local meta = redis.call('HMGET', KEYS[3], 'epoch', 'ver')
return {1, meta[1] or '', meta[2] or '0', redis.call('HVALS', KEYS[1]), edge}
