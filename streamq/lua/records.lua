-- Write a batch of task records in one call (the hot path's one write per batch).
-- KEYS[2i-1] the record (hash) of task i, KEYS[2i] its completion list
-- ARGV[1] record TTL (s), ARGV[2] completion list TTL (s); then per record:
-- the completion payload ('' while not final), the number of fields n, and n
-- field/value pairs
-- Invariant: a record is complete before its completion is pushed, so a waiter
-- that wakes (AsyncResult.get blocks on the list) always finds it final.
local ttl, done_ttl = ARGV[1], ARGV[2]
local pos = 3
for i = 1, #KEYS, 2 do
  local payload = ARGV[pos]
  local n = tonumber(ARGV[pos + 1])
  pos = pos + 2
  redis.call('HSET', KEYS[i], unpack(ARGV, pos, pos + 2 * n - 1))
  pos = pos + 2 * n
  redis.call('EXPIRE', KEYS[i], ttl)
  if payload ~= '' then
    redis.call('DEL', KEYS[i + 1])
    redis.call('RPUSH', KEYS[i + 1], payload)
    redis.call('EXPIRE', KEYS[i + 1], done_ttl)
  end
end
return #KEYS / 2
