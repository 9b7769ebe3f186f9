-- KEYS: entries, users, meta. ARGV: field prefix of the dead node, channel, publish command.
-- Removes and announces every entry of that node; returns {entries removed, users who left...}.
local all = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #ARGV[1]) == ARGV[1] then
    if remove(all[i], all[i + 1], ARGV[2], ARGV[3]) then
      out[#out + 1] = user_of(all[i])
    end
    out[1] = out[1] + 1
  end
end
return out
