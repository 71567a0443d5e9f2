-- Move a failed delivery to the delayed set for another attempt.
-- KEYS[1] stream, KEYS[2] delayed (zset), KEYS[3] delayed messages (hash)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] task id,
-- ARGV[5] due time (ms), ARGV[6] encoded message for the next attempt
-- Invariant: scheduling the next attempt and acknowledging this one happen
-- together or not at all, so a crash can neither lose nor duplicate the task.
-- Returns 0 (and changes nothing) when the entry is no longer ours: another
-- consumer reclaimed it and owns its fate now.
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[6])
return 1
