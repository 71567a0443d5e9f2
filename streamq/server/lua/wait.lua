-- A waiter's first step (AsyncResult.get): read the status and, unless the task is
-- done, mark the record as waited on, so the worker pushes its completion.
-- KEYS[1] the record (hash), KEYS[2] its completion list
-- ARGV[1] completion list TTL (s); when a BLMOVE on the list follows in the same
-- round trip: ARGV[2] the "no record" payload, ARGV[3] its TTL (ms)
-- Returns false for an unknown id, else the status. For a final record it also makes
-- sure the completion list holds the outcome, and for an unknown id (with ARGV[2])
-- that it holds something, so a BLMOVE that follows answers at once either way
-- instead of blocking on a list nobody will push to (a forgotten task).
-- Invariant: with outcomes.lua, which pushes a completion only to a record marked
-- here, exactly one of the two sees the other: either the task was final before
-- this ran, or the worker finds the mark.
local status = redis.call('HGET', KEYS[1], F.status)
if not status then
  if ARGV[2] and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('RPUSH', KEYS[2], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
  return false
end
if FINAL[status] then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local r = redis.call('HMGET', KEYS[1], F.result, F.result_ct, F.result_ce)
    redis.call('RPUSH', KEYS[2], completion(status, r[1], r[2], r[3]))
    redis.call('EXPIRE', KEYS[2], ARGV[1])
  end
  return status
end
redis.call('HSET', KEYS[1], F.waiting, '1')
return status
