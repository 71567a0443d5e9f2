-- One member's contribution to a chord (an outbox item, see writer.py). Runs on the
-- slot of the chord's body, where its state lives.
-- KEYS[1] chord state (hash: n, mode, m, count, fired), KEYS[2] its results (hash:
-- member index -> contribution), KEYS[3] the body's record, KEYS[4] its completion
-- list, KEYS[5] the body's stream
-- ARGV[1] member index, ARGV[2] the contribution ('S<ct>\n<ce>\n<result>' or
-- 'F<task id>\n<exc_type>\n<exc_message>'), ARGV[3] '1' for a failure, ARGV[4] the
-- body's error if that failure fails the chord, ARGV[5] TTL (s), ARGV[6] completion
-- TTL (s), ARGV[7] now (ms)
-- Invariants: each member index counts once, however often it is contributed (a
-- redelivered member, a sweep after a crash); the body is enqueued exactly once,
-- when the n-th distinct member contributes, and never after the chord failed; in
-- the default mode a failure fails the body at once, unless it was already enqueued.
-- Returns -1 for a chord with no state (expired, or its creation never finished),
-- 0 for a member counted before, 1 counted, 2 the chord failed, 3 the body enqueued.
local state, results, ttl = KEYS[1], KEYS[2], ARGV[5]
local n = tonumber(redis.call('HGET', state, 'n'))
if not n then return -1 end
if redis.call('HSETNX', results, ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', results, ttl)
redis.call('EXPIRE', state, ttl)
local count = redis.call('HINCRBY', state, 'count', 1)
if ARGV[3] == '1' and redis.call('HGET', state, 'mode') ~= 'collect' then
  if redis.call('HSETNX', state, 'fired', '1') == 1 then
    redis.call('HSETNX', KEYS[3], F.forwarded, '1')
    redis.call('HSET', KEYS[3], F.status, S.FAILURE, F.exc_type,
               'streamq.base.errors.ChordError', F.exc_message, ARGV[4],
               F.finished_ms, ARGV[7])
    redis.call('EXPIRE', KEYS[3], ttl)
    complete(KEYS[3], KEYS[4], 'F', ARGV[6])
    return 2
  end
  return 1
end
if count >= n and redis.call('HSETNX', state, 'fired', '1') == 1 then
  redis.call('HSETNX', KEYS[3], F.forwarded, '1')
  redis.call('HSET', KEYS[3], F.status, S.PENDING)
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('XADD', KEYS[5], '*', 'm', redis.call('HGET', state, 'm'))
  return 3
end
return 1
