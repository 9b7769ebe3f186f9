-- Reads a topic's history: the position of its latest event, some events, and the seconds
-- the events have left (negative without events), all of one moment.
-- A topic without history starts its epoch here, at offset 0, so that a client that joined
-- before the first event can later recover it; that meta lives only as long as events would.
-- KEYS: events, meta (see history_publish.lua).
-- ARGV: epoch if new, ttl secs, mode (top | since | recover | last), the first offset wanted
--       (since, recover: the client's offset plus one) or count (last), limit (since,
--       recover), the client's epoch (recover).
local epoch, top, run, valid = position()
if not valid then
  epoch = ARGV[1]
  top = 0
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'epoch', epoch, 'top', 0, 'run', run)
  redis.call('expire', KEYS[2], ARGV[2])
end
local entries = {}
local mode = ARGV[3]
if mode == 'recover' then
  -- Only when every event after the offset is kept: a recovery is never partial, and one
  -- that cannot succeed reads nothing.
  local first = ARGV[4]
  if ARGV[6] == epoch and tonumber(first) <= top
      and #redis.call('xrange', KEYS[1], first, first) == 1 then
    entries = redis.call('xrange', KEYS[1], first, '+', 'COUNT', ARGV[5])
  end
elseif mode == 'since' then
  entries = redis.call('xrange', KEYS[1], ARGV[4], '+', 'COUNT', ARGV[5])
elseif mode == 'last' then
  entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', ARGV[4])
end
return {epoch, top, entries, redis.call('ttl', KEYS[1])}
