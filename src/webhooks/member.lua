-- ARGV: prefix, cap, topic, user id, '1' joined or '0' left, leave delay (ms), the presence
-- change's epoch and version. Nodes report edges in their own time, so an edge older than the
-- last one applied for this member is dropped. A removal waits out the delay; a join meanwhile
-- cancels it and is not announced either (a reload).
local key = ARGV[3] .. '\n' .. ARGV[4]
local last = redis.call('HGET', P .. 'members', key)
if last then
  local epoch, ver = string.match(last, '^(.*)/(%d+)$')
  if epoch == ARGV[7] and tonumber(ARGV[8]) <= tonumber(ver) then
    return dropped
  end
end
redis.call('HSET', P .. 'members', key, ARGV[7] .. '/' .. ARGV[8])
if ARGV[5] == '0' then
  redis.call('ZADD', P .. 'leaving', now_ms() + tonumber(ARGV[6]), key)
elseif redis.call('ZREM', P .. 'leaving', key) == 0 then
  channel_event('member_added', ARGV[3], ARGV[4])
end
return dropped
