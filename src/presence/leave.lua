-- KEYS: entries, users, meta. ARGV: field, channel, publish command, member JSON, and the
-- channel's epoch when the entry joined ('-' for a join that never completed). Returns {2,
-- epoch, ver} when the user left (its last entry), {1, …} when another entry of it remains, {0}
-- if nothing was removed.
-- An entry Redis no longer holds is still announced when the channel's epoch changed
-- since the join: Redis lost it (a restart) and its clients never saw it leave.
local member = redis.call('HGET', KEYS[1], ARGV[1])
if member then
  local last, epoch, ver = remove(ARGV[1], member, ARGV[2], ARGV[3])
  if last then
    return {2, epoch, ver}
  end
  return {1, epoch, ver}
end
if ARGV[5] ~= '-' and redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[5] then
  local gone = redis.call('HEXISTS', KEYS[2], user_of(ARGV[1])) == 0
  local epoch, ver = bump(KEYS[3])
  announce(ARGV[2], ARGV[3], 'leave', gone, epoch, ver, ARGV[4])
  tidy()
  if gone then
    return {2, epoch, ver}
  end
end
return {0}
