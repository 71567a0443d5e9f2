-- Renew the leases of a consumer: refresh the idle time of every entry pending for it.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] most entries to renew
-- Sent by the worker's supervisor, which never runs task code: a task that holds its
-- process's interpreter lock (a long C call) cannot stop its lease from being renewed.
-- Invariant: only entries pending for this consumer are touched (XCLAIM to itself with
-- JUSTID resets idle time and keeps the delivery count), so a renewal never takes an
-- entry back from a worker that reclaimed it.
local ids = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])) do
  ids[#ids + 1] = p[1]
end
if #ids == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids), 'JUSTID')
return #ids
