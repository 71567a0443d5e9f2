-- Schedule one message a countdown from now, by the server's clock (TIME): the
-- producer's clock may be off by minutes.
-- KEYS[1] delayed (zset: task id -> due ms), KEYS[2] delayed messages (hash),
-- KEYS[3] the task's record
-- ARGV[1] task id, ARGV[2] encoded message, ARGV[3] countdown (ms), ARGV[4] record
-- TTL (s; 0: write no record), ARGV[5..] the record's field/value pairs
-- Invariant: the record is written before the message, and shows the due time the
-- server chose; the message and its due time are written together.
-- Returns the due time (ms).
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
if ARGV[4] ~= '0' then  -- a TTL of 0: no record (ignore_result)
  if #ARGV > 4 then redis.call('HSET', KEYS[3], unpack(ARGV, 5)) end
  redis.call('HSET', KEYS[3], F.status, S.SCHEDULED, F.eta_ms, due)
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
return due
