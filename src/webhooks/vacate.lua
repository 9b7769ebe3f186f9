-- ARGV: prefix, cap, topic, node, leave delay (ms), wants ('1' or '0'). This node has no
-- subscriber of the topic left: when no node has, its vacated is due after the delay.
local occ = P .. 'occ:' .. ARGV[3]
redis.call('SREM', P .. 'node:' .. ARGV[4], ARGV[3])
if redis.call('SREM', occ, ARGV[4]) == 1 and redis.call('EXISTS', occ) == 0 then
  redis.call('ZADD', P .. 'vacating', now_ms() + tonumber(ARGV[5]), ARGV[6] .. '|' .. ARGV[3])
end
return dropped
