-- Put a message in the delayed set until its due time.
-- KEYS[1] delayed (zset), KEYS[2] delayed messages (hash)
-- ARGV[1] task id, ARGV[2] due time (ms), ARGV[3] encoded message
-- Invariant: every member of the zset has its message in the hash.
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
