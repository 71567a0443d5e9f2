-- Enqueue one call with a partition key: it draws the key's next number, which fixes
-- its place among the key's calls (gate.lua lets them run in that order).
-- KEYS[1] record, KEYS[2] stream, KEYS[3] the partition's order hash
-- ARGV[1] record TTL (s), ARGV[2] encoded message, ARGV[3] partition key, then the
-- record's field/value pairs
-- Invariant: the record (with its number) is written before the message, in one step.
local seq = redis.call('HINCRBY', KEYS[3], 's:' .. ARGV[3], 1)
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('HSET', KEYS[1], 'seq', seq, 'pk', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
return seq
