-- KEYS: entries, users, meta. ARGV: field, channel, publish command. Returns 1 if removed.
local member = redis.call('HGET', KEYS[1], ARGV[1])
if not member then
  return 0
end
remove(ARGV[1], member, ARGV[2], ARGV[3])
return 1
