-- Reads a topic's history: the position of its latest event, some events, and the seconds
-- the events have left (negative without events), all of one moment.
-- A topic without history starts its epoch here, at offset 0, so that a client that joined
-- before the first event can later recover it.
-- KEYS: events, meta (see history_publish.lua).
-- ARGV: epoch if new, meta ttl secs, mode (top | since | last), first offset (since) or count
--       (last), limit (since).
local meta = redis.call('hmget', KEYS[2], 'epoch', 'top')
local epoch, top = meta[1], meta[2]
if not epoch then
  epoch = ARGV[1]
  top = '0'
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'epoch', epoch, 'top', 0)
  redis.call('expire', KEYS[2], ARGV[2])
end
local entries = {}
if ARGV[3] == 'since' then
  entries = redis.call('xrange', KEYS[1], ARGV[4], '+', 'COUNT', ARGV[5])
elseif ARGV[3] == 'last' then
  entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', ARGV[4])
end
return {epoch, top or '0', entries, redis.call('ttl', KEYS[1])}
