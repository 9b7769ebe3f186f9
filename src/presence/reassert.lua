-- KEYS: entries, users, meta. ARGV: channel, publish command, announce ('1' or '0'), then
-- (field, member JSON) for each of this node's entries. Adds the missing ones; returns
-- {how many, then user, epoch, version for each user whose first entry this was (announced
-- only)}. Silent after Redis lost its data (clients never saw them leave); announced after
-- this node was swept as dead (clients saw them leave).
local out = {0}
for i = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    local count = redis.call('HINCRBY', KEYS[2], user_of(ARGV[i]), 1)
    if ARGV[3] == '1' then
      local epoch, ver = bump(KEYS[3])
      announce(ARGV[1], ARGV[2], 'join', count == 1, epoch, ver, ARGV[i + 1])
      if count == 1 then
        out[#out + 1] = user_of(ARGV[i])
        out[#out + 1] = epoch
        out[#out + 1] = tostring(ver)
      end
    end
    out[1] = out[1] + 1
  end
end
return out
