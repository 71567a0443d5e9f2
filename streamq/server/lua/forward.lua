-- Take one canvas step after the step before it (an outbox item, see writer.py):
-- enqueue it ('E') or fail it because that step failed ('X'). Runs on the step's slot.
-- KEYS[1] the step's record, KEYS[2] its completion list; for 'E' also KEYS[3] its
-- stream, KEYS[4] delayed (zset), KEYS[5] delayed messages (hash)
-- ARGV[1] 'E' or 'X', ARGV[2] record TTL (s), ARGV[3] completion TTL (s), then
--   'E': ARGV[4] task id, ARGV[5] message, ARGV[6] countdown (ms; 0: now),
--        ARGV[7] task name, ARGV[8] queue
--   'X': ARGV[4] exc_type, ARGV[5] exc_message, ARGV[6] finished (ms)
-- Invariant: a step is enqueued or failed at most once, however often its forward is
-- sent (a sweep after a crash sends it again): the first sets the record's
-- forwarded marker, and every later one finds it and writes nothing.
-- Returns 1 when it wrote, 0 when the step was forwarded before.
local rec, ttl = KEYS[1], ARGV[2]
if redis.call('HSETNX', rec, F.forwarded, '1') == 0 then
  return 0
end
if ARGV[1] == 'E' then
  local delay = tonumber(ARGV[6])
  -- The task and queue again: a record that expired while the canvas ran comes back.
  redis.call('HSET', rec, F.task, ARGV[7], F.queue, ARGV[8])
  if delay > 0 then
    local t = redis.call('TIME')
    local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
    redis.call('HSET', rec, F.status, S.SCHEDULED, F.eta_ms, due)
    redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
    redis.call('ZADD', KEYS[4], due, ARGV[4])
  else
    redis.call('HSET', rec, F.status, S.PENDING)
    redis.call('XADD', KEYS[3], '*', 'm', ARGV[5])
  end
  redis.call('EXPIRE', rec, ttl)
  return 1
end
if FINAL[redis.call('HGET', rec, F.status)] then
  redis.call('EXPIRE', rec, ttl)
  return 0
end
redis.call('HSET', rec, F.status, S.FAILURE, F.exc_type, ARGV[4], F.exc_message, ARGV[5],
           F.finished_ms, ARGV[6])
redis.call('EXPIRE', rec, ttl)
complete(rec, KEYS[2], 'F', ARGV[3])
return 1
