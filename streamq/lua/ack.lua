-- Acknowledge and delete finished entries in one step.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2..] entry ids
-- Invariant: an entry leaves the stream only once it is acknowledged, so the
-- stream holds backlog plus in-flight work and nothing that is done.
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
