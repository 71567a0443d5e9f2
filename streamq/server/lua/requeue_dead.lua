-- Move one dead letter back into its queue's stream, resetting the task's record.
-- KEYS[1] dead-letter stream, KEYS[2] stream, KEYS[3] the record, KEYS[4] its
-- completion list
-- ARGV[1] dead-letter entry id, ARGV[2] encoded message (retries reset),
-- ARGV[3] record TTL (s), ARGV[4] n, then n field/value pairs of the reset record,
-- then the names of the fields of the earlier outcome to clear
-- Invariants: the message is in exactly one of the two streams afterwards; the
-- record is reset only when this call moved the letter (a concurrent requeue of the
-- same letter changes nothing), and before the message can run, so a worker's
-- outcome is never overwritten by the reset.
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local n = tonumber(ARGV[4])
redis.call('DEL', KEYS[4])
if #ARGV > 4 + 2 * n then redis.call('HDEL', KEYS[3], unpack(ARGV, 5 + 2 * n)) end
redis.call('HSET', KEYS[3], unpack(ARGV, 5, 4 + 2 * n))
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
return 1
