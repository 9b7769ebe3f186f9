-- ARGV: prefix, cap, group, consumer, min idle (ms), cursor, count. Takes over events whose
-- node stopped touching them (it died). Returns {next cursor, {{id, {field, value, …}}, …}}.
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], 'COUNT', ARGV[7])
return {reply[1], reply[2]}
