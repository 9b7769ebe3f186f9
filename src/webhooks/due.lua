-- ARGV: prefix, cap, most leaves to fire. Queues the vacated and member_removed events whose
-- delay has passed; returns how many.
local now = now_ms()
local fired = 0
for _, topic in ipairs(redis.call('ZRANGEBYSCORE', P .. 'vacating', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'vacating', topic)
  if redis.call('EXISTS', P .. 'occ:' .. topic) == 0 then
    channel_event('channel_vacated', topic)
    fired = fired + 1
  end
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leaving', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'leaving', key)
  local topic, user = string.match(key, '^([^\n]*)\n(.*)$')
  if topic then
    channel_event('member_removed', topic, user)
    fired = fired + 1
  end
end
return fired
