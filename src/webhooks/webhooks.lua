-- Shared by every webhook script (prepended to each). Every key shares the hash tag
-- `{webhooks}`, so on a Redis Cluster one script can decide a transition and queue its event
-- atomically. KEYS[1] is the queue (a stream); ARGV[1] the key prefix, ARGV[2] the most events
-- queued and waiting to retry together.
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The apps whose events were refused because the queue is full; scripts return it.
local dropped = {}

local function enqueue(app, event)
  local depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', P .. 'retry')
  if depth >= tonumber(ARGV[2]) then
    dropped[#dropped + 1] = app
    return
  end
  redis.call('XADD', KEYS[1], '*', 'app', app, 'event', event)
end

-- A topic `channel:app` as its channel and app (Pusher channel names hold no `:`).
local function split(topic)
  return string.match(topic, '^([^:]*):(.*)$')
end

local function channel_event(name, topic, user)
  local channel, app = split(topic)
  local event = {name = name, channel = channel}
  if user then
    event.user_id = user
  end
  enqueue(app, cjson.encode(event))
end

-- A pending vacate is stored as `1|topic` (the app wants the event) or `0|topic`.
local function cancel_vacate(topic)
  return redis.call('ZREM', P .. 'vacating', '1|' .. topic, '0|' .. topic)
end
