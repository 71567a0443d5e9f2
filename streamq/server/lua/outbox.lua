-- A queue's outbox of canvas forwards (writer.py): the items due for a sweep, or
-- deleting items that were forwarded.
-- KEYS[1] outbox (hash: item -> forward), KEYS[2] outbox due (zset: item -> written ms)
-- ARGV[1] 'due': ARGV[2] age (ms), ARGV[3] most items; returns item, forward, ...
--   of the items written at least that long ago by the server's clock
-- ARGV[1] 'done': then item, forward pairs: each is deleted if it still holds that
--   forward (a newer run of the same task may have written it again)
-- Invariant: an item leaves the outbox only once its forward was confirmed.
local outbox, due = KEYS[1], KEYS[2]
if ARGV[1] == 'due' then
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
  local out = {}
  for _, item in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', cutoff, 'LIMIT', 0, ARGV[3])) do
    local value = redis.call('HGET', outbox, item)
    if value then
      out[#out + 1] = item
      out[#out + 1] = value
    else
      redis.call('ZREM', due, item)
    end
  end
  return out
end
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', outbox, ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', outbox, ARGV[i])
    redis.call('ZREM', due, ARGV[i])
    n = n + 1
  end
end
return n
