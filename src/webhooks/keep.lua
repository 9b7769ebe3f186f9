-- ARGV: prefix, cap, group, consumer, ids... Resets the idle time of the events this consumer
-- still owns, so no other node takes them over; one another node already took is left to it.
local kept = 0
for i = 5, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[i], ARGV[i], 1, ARGV[4])
  if #pending > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[4], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
