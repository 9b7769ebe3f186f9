-- Shared by every webhook script (prepended to each). Every key shares the hash tag
-- `{webhooks}`, so on a Redis Cluster one script can decide a transition and queue its event
-- atomically. KEYS[1] is the queue (a stream); ARGV[1] the key prefix, ARGV[2] the queue's cap.
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function enqueue(app, event)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'app', app, 'event', event)
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
