-- Move one dead letter back into its queue's stream.
-- KEYS[1] dead-letter stream, KEYS[2] stream
-- ARGV[1] dead-letter entry id, ARGV[2] encoded message (retries reset)
-- Invariant: the message is in exactly one of the two streams afterwards.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
return 1
