-- Enqueue a chunk of calls of one task to one queue, with their records, in one call.
-- KEYS[1] stream; KEYS[2..] the record (hash) of each message, in order
-- ARGV[1] record TTL (s), ARGV[2] number of record fields n, then the n field/value
-- pairs every record shares, then one encoded message per record key
-- Invariant: each record is written before its message, so a message never exists
-- without its record and its id never reads UNKNOWN while it waits.
local n = tonumber(ARGV[2])
local last = 2 + 2 * n
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], unpack(ARGV, 3, last))
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  redis.call('XADD', KEYS[1], '*', 'm', ARGV[last + i - 1])
end
return #KEYS - 1
