-- ARGV: prefix, cap, dead node, leave delay (ms). Takes the dead node out of every topic it
-- reported; a topic left with no node is vacated after the delay, as after a leave.
local node_key = P .. 'node:' .. ARGV[3]
local due = now_ms() + tonumber(ARGV[4])
local vacated = 0
for _, topic in ipairs(redis.call('SMEMBERS', node_key)) do
  local occ = P .. 'occ:' .. topic
  if redis.call('SREM', occ, ARGV[3]) == 1 and redis.call('EXISTS', occ) == 0 then
    redis.call('ZADD', P .. 'vacating', due, '1|' .. topic)
    vacated = vacated + 1
  end
end
redis.call('DEL', node_key)
return vacated
