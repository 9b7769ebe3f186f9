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

-- `depth` counts each app's events queued or waiting to retry; `caps` holds each app's share
-- (absent: none of its own), set by the nodes from the app's settings.
local function enqueue(app, event)
  local depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', P .. 'retry')
  if depth == 0 then
    -- Nothing is queued, so every app's count is 0 (a retry dropped as malformed left one).
    redis.call('DEL', P .. 'depth')
  end
  if depth >= tonumber(ARGV[2]) then
    dropped[#dropped + 1] = app
    return
  end
  local cap = tonumber(redis.call('HGET', P .. 'caps', app) or '0')
  if cap > 0 and tonumber(redis.call('HGET', P .. 'depth', app) or '0') >= cap then
    dropped[#dropped + 1] = app
    return
  end
  redis.call('XADD', KEYS[1], '*', 'app', app, 'event', event)
  redis.call('HINCRBY', P .. 'depth', app, 1)
end

-- The `app` field of a flat list of stream fields.
local function app_of(fields)
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'app' then
      return fields[i + 1]
    end
  end
end

-- One of `app`'s events left the queue for good.
local function gone(app)
  if app and redis.call('HINCRBY', P .. 'depth', app, -1) <= 0 then
    redis.call('HDEL', P .. 'depth', app)
  end
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
