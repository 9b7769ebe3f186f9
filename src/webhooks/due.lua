-- ARGV: prefix, cap, most items to move. Queues the vacated and member_removed events whose
-- delay has passed, and moves retries whose time has come back into the queue.
local now = now_ms()
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'vacating', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'vacating', item)
  local wants, topic = string.match(item, '^(.)|(.*)$')
  if topic and wants == '1' and redis.call('EXISTS', P .. 'occ:' .. topic) == 0 then
    channel_event('channel_vacated', topic)
  end
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leaving', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'leaving', key)
  redis.call('HDEL', P .. 'members', key)
  local topic, user = string.match(key, '^([^\n]*)\n(.*)$')
  if topic then
    channel_event('member_removed', topic, user)
  end
end
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'retry', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'retry', item)
  local fields = cjson.decode(item)
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return dropped
