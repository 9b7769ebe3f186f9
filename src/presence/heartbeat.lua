-- KEYS: live nodes (zset, score = Redis time in ms), dead nodes being swept, this node's swept
-- marker. ARGV: node id. Returns 0 (known), 1 (Redis had lost this node: re-assert silently),
-- 2 (swept as dead: re-assert and announce) or 3 (being swept: wait).
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 3
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
if redis.call('DEL', KEYS[3]) == 1 then
  return 2
end
return added
