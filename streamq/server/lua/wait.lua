-- A waiter's first step (AsyncResult.get): read the status and, unless the task is
-- done, mark the record as waited on, so the worker pushes its completion.
-- KEYS[1] the record (hash), KEYS[2] its completion list
-- ARGV[1] completion list TTL (s)
-- Returns false for an unknown id, else the status; for a final record it also makes
-- sure the completion list holds the outcome, so a BLMOVE that follows in the same
-- round trip answers at once.
-- Invariant: with outcomes.lua, which pushes a completion only to a record marked
-- here, exactly one of the two sees the other: either the task was final before
-- this ran, or the worker finds the mark.
local status = redis.call('HGET', KEYS[1], F.status)
if not status then
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
