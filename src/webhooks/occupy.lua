-- ARGV: prefix, cap, topic, node, announce ('1' or '0'). This node has subscribers of the
-- topic: the first node of a topic occupies it, unless its vacated is still pending (a reload).
local occ = P .. 'occ:' .. ARGV[3]
redis.call('SADD', P .. 'node:' .. ARGV[4], ARGV[3])
if redis.call('SADD', occ, ARGV[4]) == 1 and redis.call('SCARD', occ) == 1 then
  if redis.call('ZREM', P .. 'vacating', ARGV[3]) == 0 and ARGV[5] == '1' then
    channel_event('channel_occupied', ARGV[3])
  end
end
return 0
