-- ARGV: prefix, cap, topic, user id, '1' joined or '0' left, leave delay (ms), the presence
-- change's epoch and version, wants ('1' or '0'). Nodes report edges in their own time, so each
-- member keeps the last edge applied (`epoch/ver/op`); an older one is dropped. Epochs are
-- Redis times of equal width, so a later channel's epoch sorts after an earlier one's. A join
-- after a join (the leave between was late) or a leave after a leave changes nothing. A removal
-- waits out the delay; a join meanwhile cancels it and is not announced either (a reload).
local key = ARGV[3] .. '\n' .. ARGV[4]
local function older(epoch, ver, than_epoch, than_ver)
  if #epoch ~= #than_epoch then
    return #epoch < #than_epoch
  end
  if epoch ~= than_epoch then
    return epoch < than_epoch
  end
  return tonumber(ver) <= tonumber(than_ver)
end
local last_op
local last = redis.call('HGET', P .. 'members', key)
if last then
  local epoch, ver, op = string.match(last, '^(.*)/(%d+)/([jl])$')
  if epoch then
    if older(ARGV[7], ARGV[8], epoch, ver) then
      return dropped
    end
    last_op = op
  end
end
local op = ARGV[5] == '1' and 'j' or 'l'
redis.call('HSET', P .. 'members', key, ARGV[7] .. '/' .. ARGV[8] .. '/' .. op)
redis.call('ZREM', P .. 'forget', key)
if op == last_op then
  return dropped
end
if op == 'l' then
  redis.call('ZADD', P .. 'leaving', now_ms() + tonumber(ARGV[6]), ARGV[9] .. '|' .. key)
elseif redis.call('ZREM', P .. 'leaving', '1|' .. key, '0|' .. key) == 0 and ARGV[9] == '1' then
  channel_event('member_added', ARGV[3], ARGV[4])
end
return dropped
