-- KEYS: entries, users, meta. ARGV: field prefix of the dead node, channel, publish command.
-- Removes and announces every entry of that node; returns how many.
local all = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, #ARGV[1]) == ARGV[1] then
    remove(all[i], all[i + 1], ARGV[2], ARGV[3])
    removed = removed + 1
  end
end
return removed
