-- ARGV: prefix, cap, group, consumer, min idle (ms), cursor, count. Takes over events whose
-- node stopped touching them (it died). Returns {next cursor, id, app, event, id, app, event…};
-- entries trimmed from the stream meanwhile are acknowledged and skipped.
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], 'COUNT', ARGV[7])
local out = {reply[1]}
for _, entry in ipairs(reply[2]) do
  local fields = entry[2]
  if fields then
    local app, event
    for i = 1, #fields, 2 do
      if fields[i] == 'app' then app = fields[i + 1] end
      if fields[i] == 'event' then event = fields[i + 1] end
    end
    if app and event then
      out[#out + 1] = entry[1]
      out[#out + 1] = app
      out[#out + 1] = event
    end
  end
end
if reply[3] and #reply[3] > 0 then
  redis.call('XACK', KEYS[1], ARGV[3], unpack(reply[3]))
end
return out
