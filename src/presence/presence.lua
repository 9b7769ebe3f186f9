-- Shared by every presence script (prepended to each). The keys of one channel share the hash
-- tag of its topic, which is also its Redis channel's slot: a script changes the membership and
-- announces it atomically, on the shard that delivers the channel. An entry's field is
-- `node|entry|user id`, so no script has to decode a member's JSON.

-- Publishes a change on the channel's topic, as the bus's presence envelope.
local function announce(channel, cmd, op, edge, epoch, ver, member)
  redis.call(cmd, channel, '{"v":1,"presence":{"op":"' .. op .. '","edge":' .. tostring(edge) ..
    ',"epoch":"' .. epoch .. '","ver":' .. ver .. ',"member":' .. member .. '}}')
end

-- The channel's epoch (made when the channel is first seen) and its next version.
local function bump(meta)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', meta, 'epoch', epoch)
  end
  return epoch, redis.call('HINCRBY', meta, 'ver', 1)
end

local function user_of(field)
  return string.match(field, '^[^|]*|[^|]*|(.*)$')
end

-- Drops the user count and version of a channel left without entries.
local function tidy()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2], KEYS[3])
  end
end

-- Removes one entry (KEYS: entries, users, meta) and announces it; returns whether it was its
-- user's last, and the change's epoch and version.
local function remove(field, member, channel, cmd)
  redis.call('HDEL', KEYS[1], field)
  local user = user_of(field)
  local left = redis.call('HINCRBY', KEYS[2], user, -1)
  if left <= 0 then
    redis.call('HDEL', KEYS[2], user)
  end
  local epoch, ver = bump(KEYS[3])
  announce(channel, cmd, 'leave', left <= 0, epoch, ver, member)
  tidy()
  return left <= 0, epoch, ver
end
