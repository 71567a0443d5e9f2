-- Move due messages into the stream, by the server's clock (TIME) only: a worker's
-- clock may be off by minutes, so none of them decides when a message is due.
-- KEYS[1] delayed (zset: task id -> due ms), KEYS[2] delayed messages (hash),
-- KEYS[3] the stream
-- ARGV[1] most to move in one call
-- Invariant: a message leaves the zset in the same step it enters the stream, so any
-- number of workers can promote at once without duplicating one.
-- Returns {moved, next due time in ms or -1}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
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
