-- Enqueue one message with its record, in one command.
-- KEYS[1] record (hash); KEYS[2] stream, or for a delayed message the delayed zset
-- KEYS[3] delayed messages (hash; only for a delayed message)
-- ARGV[1] record TTL (s), ARGV[2] encoded message, ARGV[3] due time in ms or '',
-- ARGV[4] task id, then the record's field/value pairs
-- Invariant: a message never exists without its record, so its id never reads
-- UNKNOWN while it waits.
-- unpack() of an ARGV range: copying ARGV into a table first doubles the cost.
redis.call('HSET', KEYS[1], unpack(ARGV, 5, #ARGV))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  return redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return ARGV[4]
