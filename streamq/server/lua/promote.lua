-- Move due delayed messages into the stream.
-- KEYS[1] delayed (zset), KEYS[2] delayed messages (hash), KEYS[3] stream
-- ARGV[1] now (ms), ARGV[2] most to move in one call
-- Invariant: a message leaves the zset in the same step it enters the stream,
-- so any number of workers can promote at once without duplicating one.
-- Returns {moved, next due time in ms or -1}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
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
