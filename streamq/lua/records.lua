-- Write a batch of task records in one call (the hot path's one write per batch).
-- KEYS[2i-1] the record (hash) of task i, KEYS[2i] its completion list
-- ARGV[1] record TTL (s), ARGV[2] completion list TTL (s), ARGV[3] the worker (for
-- successes); then per record either
--   'S', result, content type, content encoding, deliveries, started_ms, runtime_ms:
--   a success, the common case, whose field names are written here instead of being
--   sent for every task; or
--   'R', the completion payload ('' while not final), the number of fields n, and
--   n field/value pairs.
-- A completion is pushed only to a record a waiter marked (wait.lua): most tasks
-- have none, and the list would cost the server a push and a TTL each.
-- Invariant: a record is complete before its completion is pushed, so a waiter
-- that wakes (AsyncResult.get blocks on the list) always finds it final.
local ttl, done_ttl, worker = ARGV[1], ARGV[2], ARGV[3]
local pos = 4
for i = 1, #KEYS, 2 do
  local payload
  if ARGV[pos] == 'S' then
    local result, ct, ce = ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
    if ce == 'utf-8' then  -- the default: not stored
      redis.call('HSET', KEYS[i], 'status', 'SUCCESS', 'result', result, 'result_ct', ct,
                 'deliveries', ARGV[pos + 4], 'started_ms', ARGV[pos + 5],
                 'runtime_ms', ARGV[pos + 6], 'worker', worker)
    else
      redis.call('HSET', KEYS[i], 'status', 'SUCCESS', 'result', result, 'result_ct', ct,
                 'result_ce', ce, 'deliveries', ARGV[pos + 4], 'started_ms', ARGV[pos + 5],
                 'runtime_ms', ARGV[pos + 6], 'worker', worker)
    end
    payload = 'S' .. ct .. '\n' .. ce .. '\n' .. result
    pos = pos + 7
  else
    payload = ARGV[pos + 1]
    local n = tonumber(ARGV[pos + 2])
    pos = pos + 3
    redis.call('HSET', KEYS[i], unpack(ARGV, pos, pos + 2 * n - 1))
    pos = pos + 2 * n
  end
  redis.call('EXPIRE', KEYS[i], ttl)
  if payload ~= '' and redis.call('HEXISTS', KEYS[i], 'waiting') == 1 then
    -- Only the newest completion counts (a requeued task can finish twice).
    if redis.call('RPUSH', KEYS[i + 1], payload) > 1 then
      redis.call('LTRIM', KEYS[i + 1], -1, -1)
    end
    redis.call('EXPIRE', KEYS[i + 1], done_ttl)
  end
end
return #KEYS / 2
