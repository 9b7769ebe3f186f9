-- ARGV: prefix, cap, most items to move, how long (ms) a removed member's last edge is kept.
-- Queues the vacated and member_removed events whose
-- delay has passed, and moves retries whose time has come back into the queue.
local now = now_ms()
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'vacating', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'vacating', item)
  local wants, topic = string.match(item, '^(.)|(.*)$')
  if topic and wants == '1' and redis.call('EXISTS', P .. 'occ:' .. topic) == 0 then
    channel_event('channel_vacated', topic)
  end
end
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leaving', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'leaving', item)
  local wants, key = string.match(item, '^(.)|(.*)$')
  local topic, user = string.match(key or '', '^([^\n]*)\n(.*)$')
  if topic then
    -- The member's last edge is kept a while longer, so a report still on its way is seen
    -- as old.
    redis.call('ZADD', P .. 'forget', now + tonumber(ARGV[4]), key)
    if wants == '1' then
      channel_event('member_removed', topic, user)
    end
  end
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', P .. 'forget', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'forget', key)
  redis.call('HDEL', P .. 'members', key)
end
-- A retry is stored as a JSON array of its stream fields; anything else is dropped.
local skipped = 0
for _, item in ipairs(redis.call('ZRANGEBYSCORE', P .. 'retry', '-inf', now, 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', P .. 'retry', item)
  local ok, fields = pcall(cjson.decode, item)
  if ok and type(fields) == 'table' and #fields > 0 and #fields % 2 == 0 then
    local strings = true
    for _, field in ipairs(fields) do
      if type(field) ~= 'string' then
        strings = false
      end
    end
    if strings then
      redis.call('XADD', KEYS[1], '*', unpack(fields))
    else
      skipped = skipped + 1
    end
  else
    skipped = skipped + 1
  end
end
if skipped > 0 then
  dropped[#dropped + 1] = 'none'
end
return dropped
