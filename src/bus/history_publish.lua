-- Stores an event in its topic's history and publishes it, in one step: the offset subscribers
-- see is the stored one, and a topic's events are stored and delivered in offset order
-- whichever node publishes them.
-- KEYS: events (a stream whose entry ids are the offsets), meta (a hash: epoch, top, run).
-- ARGV: envelope (a JSON object), size, ttl secs, meta ttl secs, epoch if new, channel,
--       publish command.
local epoch, top, run, valid = position()
if not valid then
  -- A new life of the history begins; what remains of the events belongs to the old one.
  epoch = ARGV[5]
  top = 0
  redis.call('del', KEYS[1])
end
local offset = top + 1
-- The entry first: should it fail, nothing else has changed.
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], string.format('%d-0', offset), 'e', ARGV[1])
redis.call('hset', KEYS[2], 'epoch', epoch, 'top', offset, 'run', run)
redis.call('expire', KEYS[2], ARGV[4])
redis.call('expire', KEYS[1], ARGV[3])
local stamped = string.format('{"offset":%d,"epoch":%s,', offset, cjson.encode(epoch))
redis.call(ARGV[7], ARGV[6], stamped .. string.sub(ARGV[1], 2))
return {offset, epoch}
