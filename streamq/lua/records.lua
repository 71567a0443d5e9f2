-- Write a batch of task records in one call (the hot path's one write per batch).
-- KEYS[i] the record (hash) of task i
-- ARGV[1] TTL in seconds; then per record: channel to publish on ('' for none),
-- number of fields n, then n field/value pairs
-- Invariant: a record and its TTL are written together; the completion is
-- published only after the final record is in place, so a waiter that wakes
-- always reads it.
local ttl = ARGV[1]
local pos = 2
for i = 1, #KEYS do
  local channel = ARGV[pos]
  local n = tonumber(ARGV[pos + 1])
  pos = pos + 2
  redis.call('HSET', KEYS[i], unpack(ARGV, pos, pos + 2 * n - 1))
  pos = pos + 2 * n
  redis.call('EXPIRE', KEYS[i], ttl)
  if channel ~= '' then redis.call('PUBLISH', channel, '1') end
end
return #KEYS
