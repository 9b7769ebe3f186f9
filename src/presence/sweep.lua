-- KEYS: entries, users, meta. ARGV: field prefix of the dead node, channel, publish command.
-- Removes and announces every entry of that node; returns {entries removed, then user, epoch,
-- version for each user who left}.
local all = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #ARGV[1]) == ARGV[1] then
    local last, epoch, ver = remove(all[i], all[i + 1], ARGV[2], ARGV[3])
    if last then
      out[#out + 1] = user_of(all[i])
      out[#out + 1] = epoch
      out[#out + 1] = tostring(ver)
    end
    out[1] = out[1] + 1
  end
end
return out
