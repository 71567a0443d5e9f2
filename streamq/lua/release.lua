-- Hand back prefetched entries this consumer has not started, as new entries
-- at the tail, so an idle process can take them.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, then pairs: entry id, encoded message
-- Invariant: each entry is either still ours or re-added exactly once.
-- Returns the number released.
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #mine == 1 then
    redis.call('XADD', KEYS[1], '*', 'm', ARGV[i + 1])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
