-- May a call with a partition key run now? Only when its number is the key's next;
-- otherwise it is parked, out of the stream, until the call before it has finished
-- (the 'K' step of outcomes.lua puts it back).
-- KEYS[1] stream, KEYS[2] the partition's order hash, KEYS[3] the key's parked calls
-- (sorted set: number -> message), KEYS[4] the call's record
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry, ARGV[4] partition key, ARGV[5] message
-- Returns its number when it may run (0: it has no number, its record is gone: run
-- it unordered), -1 when parked (or no longer this consumer's: another owns it).
local seq = tonumber(redis.call('HGET', KEYS[4], 'seq') or '0')
if seq == 0 then return 0 end
local nxt = tonumber(redis.call('HGET', KEYS[2], 'n:' .. ARGV[4]) or '1')
if seq <= nxt then return seq end  -- its turn (or a repeat of one that ran)
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[3], seq, ARGV[5])
  local ttl = redis.call('TTL', KEYS[4])
  if ttl > 0 then redis.call('EXPIRE', KEYS[3], ttl) end
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
end
return -1
