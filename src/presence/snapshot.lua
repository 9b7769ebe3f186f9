-- KEYS: entries, users, meta. The membership and its version, read in one step.
local meta = redis.call('HMGET', KEYS[3], 'epoch', 'ver')
return {1, meta[1] or '', meta[2] or '0', redis.call('HVALS', KEYS[1])}
