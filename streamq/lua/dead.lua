-- Move a message to the queue's dead-letter stream with its reason.
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] group, ARGV[2] consumer ('' = skip the ownership check),
-- ARGV[3] entry id, ARGV[4] raw message, ARGV[5] reason, ARGV[6] task name,
-- ARGV[7] task id, ARGV[8] time (ms), ARGV[9] delivery count, ARGV[10] retries
-- Invariant: the message is in exactly one of the two streams afterwards.
if ARGV[2] ~= '' then
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
  if #mine == 0 then return 0 end
end
redis.call('XADD', KEYS[2], '*', 'm', ARGV[4], 'reason', ARGV[5], 'task', ARGV[6],
           'id', ARGV[7], 'at_ms', ARGV[8], 'deliveries', ARGV[9], 'retries', ARGV[10])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
