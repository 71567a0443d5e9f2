-- Refresh the idle time of the entries this consumer still holds.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
-- XCLAIM ... JUSTID resets idle time but also takes ownership, so it is only
-- sent for entries still pending for this consumer: a heartbeat must never
-- steal back an entry another worker has already reclaimed.
-- Returns the ids that are no longer ours.
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #mine == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
