-- ARGV: prefix, cap, app, event JSON. Queues an event as is (a client event) unless the queue
-- is full.
enqueue(ARGV[3], ARGV[4])
return dropped
