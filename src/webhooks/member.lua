-- ARGV: prefix, cap, topic, user id, '1' joined or '0' left, leave delay (ms). A removal waits
-- out the delay; a join meanwhile cancels it and is not announced either (a reload).
local key = ARGV[3] .. '\n' .. ARGV[4]
if ARGV[5] == '0' then
  redis.call('ZADD', P .. 'leaving', now_ms() + tonumber(ARGV[6]), key)
elseif redis.call('ZREM', P .. 'leaving', key) == 0 then
  channel_event('member_added', ARGV[3], ARGV[4])
end
return 0
