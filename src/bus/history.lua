-- The start of both history scripts (KEYS[2] is the topic's meta: epoch, top, run).
-- Returns the topic's epoch and latest offset, this Redis process's run id, and whether the
-- meta is still valid: meta that another Redis process wrote (one restarted from disk, or a
-- replica that took over) may hold less than clients were sent, so it counts as lost.
local function position()
  local run = string.match(redis.call('info', 'server'), 'run_id:(%x+)')
  local meta = redis.call('hmget', KEYS[2], 'epoch', 'top', 'run')
  local epoch, top = meta[1], tonumber(meta[2])
  return epoch, top, run, (epoch and top and meta[3] == run) and true or false
end
