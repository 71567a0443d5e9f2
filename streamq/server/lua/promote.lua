-- The delayed set, by the server's clock (TIME) only: a producer's or a worker's clock
-- may be off by minutes, so none of them decides when a message is due.
-- KEYS[1] delayed (zset: task id -> due ms), KEYS[2] delayed messages (hash),
-- KEYS[3] the stream (promote) or the task's record (schedule)
-- ARGV[1] the mode:
--   'P': promote: move due messages into the stream.
--        ARGV[2] most to move in one call.
--        Invariant: a message leaves the zset in the same step it enters the stream,
--        so any number of workers can promote at once without duplicating one.
--        Returns {moved, next due time in ms or -1}.
--   'S': schedule one message a countdown from now: its record, then the message,
--        due at TIME + countdown; the record shows that due time.
--        ARGV[2] task id, ARGV[3] encoded message, ARGV[4] countdown (ms),
--        ARGV[5] record TTL (s), ARGV[6..] the record's field/value pairs.
--        Returns the due time (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if ARGV[1] == 'S' then
  local due = now + tonumber(ARGV[4])
  if #ARGV > 5 then redis.call('HSET', KEYS[3], unpack(ARGV, 6)) end
  redis.call('HSET', KEYS[3], F.status, S.SCHEDULED, F.eta_ms, due)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[1], due, ARGV[2])
  return due
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local m = redis.call('HGET', KEYS[2], id)
  if m then
    redis.call('XADD', KEYS[3], '*', 'm', m)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, tonumber(nxt[2])}
