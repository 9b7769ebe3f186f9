-- KEYS: live nodes, dead nodes. ARGV: silence (ms) that makes a node dead, this node's id,
-- swept-marker key prefix, marker lifetime (ms). Moves silent nodes from live to dead and marks
-- them swept (so one that was only cut off re-announces its members); returns every dead node
-- still to sweep, including those a crashed sweeper left.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local silent = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
for _, node in ipairs(silent) do
  if node ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], node)
    redis.call('ZADD', KEYS[2], now, node)
    redis.call('SET', ARGV[3] .. node, '1', 'PX', ARGV[4])
  end
end
return redis.call('ZRANGE', KEYS[2], 0, -1)
