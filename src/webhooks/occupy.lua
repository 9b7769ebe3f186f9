-- ARGV: prefix, cap, topic, node, announce ('1' or '0'), wants ('1' or '0'). This node has
-- subscribers of the topic. The first node of a topic occupies it, unless its vacated is still
-- pending (a reload): that cancels both. The event is queued only when announced and wanted,
-- but the state is kept for every app, so webhooks added later see true transitions.
local occ = P .. 'occ:' .. ARGV[3]
redis.call('SADD', P .. 'node:' .. ARGV[4], ARGV[3])
if redis.call('SADD', occ, ARGV[4]) == 1 and redis.call('SCARD', occ) == 1 then
  if cancel_vacate(ARGV[3]) == 0 and ARGV[5] == '1' and ARGV[6] == '1' then
    channel_event('channel_occupied', ARGV[3])
  end
end
return dropped
