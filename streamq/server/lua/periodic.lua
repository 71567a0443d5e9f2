-- One periodic schedule's step, by the server's clock (TIME): any number of workers,
-- whose clocks disagree, call this for the same tick, and at most one call fires it.
-- KEYS[1] the schedule's state (hash), KEYS[2] the queue's stream, KEYS[3] the record
-- of the call to enqueue, KEYS[4] the record of the schedule's last call (KEYS[1]
-- when it has none)
-- ARGV[1] definition version, ARGV[2] definition (JSON, shown by streamq periodic),
-- ARGV[3] state TTL (s), ARGV[4] takeover after (ms), ARGV[5] first tick (ms) if the
-- caller's definition is installed now, ARGV[6] the next tick the caller expects (ms;
-- '' only touches, 'release' gives the schedule up), ARGV[7] the tick to fire (ms),
-- ARGV[8] the tick after it, ARGV[9] grace (ms; '' catches up any late tick),
-- ARGV[10] '1': skip while the last call is not final, ARGV[11] the last call's id as
-- the caller knows it, ARGV[12] the new call's task id, ARGV[13] its message,
-- ARGV[14] its record's TTL (s; 0: no record), ARGV[15..] its record's field/value pairs
-- Invariant: ``next`` only moves forward, past the tick it passes, in the same step
-- that writes that tick's record and message (or notes its skip): a tick fires once,
-- and every tick before ``next`` was fired or skipped. Another definition (other
-- code) replaces the one in force only once no worker touched that for ARGV[4] ms.
-- Returns {outcome, server now (ms), next tick (ms) or -1, last tick or -1, last id}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'version', 'next', 'seen', 'last_tick', 'last_id')
local function reply(outcome, nxt)
  return {outcome, now, tonumber(nxt) or -1, tonumber(st[4]) or -1, st[5] or ''}
end
if ARGV[6] == 'release' then
  if st[1] == ARGV[1] then redis.call('HSET', KEYS[1], 'seen', 0) end
  return reply('released', st[2])
end
if st[1] ~= ARGV[1] then
  if st[1] and tonumber(st[3] or 0) > now - tonumber(ARGV[4]) then
    return reply('other', st[2])
  end
  local first = tonumber(ARGV[5])
  if first <= now then return reply('stale', st[2]) end
  redis.call('HSET', KEYS[1], 'version', ARGV[1], 'spec', ARGV[2], 'next', first,
             'since', now, 'seen', now)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return reply('installed', first)
end
redis.call('HSET', KEYS[1], 'seen', now)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local nxt = tonumber(st[2])
if ARGV[6] == '' then return reply('state', nxt) end
local tick, after = tonumber(ARGV[7]), tonumber(ARGV[8])
-- Fired or skipped already, not due yet, or not the latest due tick (the caller's
-- clock is off): the caller computes again from the reply.
if tonumber(ARGV[6]) ~= nxt or (st[5] or '') ~= ARGV[11] or tick < nxt or tick > now
    or after <= now then
  return reply('state', nxt)
end
local skip = nil
if ARGV[9] ~= '' and now - tick > tonumber(ARGV[9]) then
  skip = 'missed'
elseif ARGV[10] == '1' and st[5] then
  local status = redis.call('HGET', KEYS[4], F.status)
  if status and not FINAL[status] then skip = 'running' end
end
if skip then
  redis.call('HSET', KEYS[1], 'next', after, 'last_skip_tick', tick, 'last_skip', skip)
  redis.call('HINCRBY', KEYS[1], 'skipped', 1)
  return reply('skipped:' .. skip, after)
end
if ARGV[14] ~= '0' then
  redis.call('HSET', KEYS[3], unpack(ARGV, 15))
  redis.call('EXPIRE', KEYS[3], ARGV[14])
end
redis.call('XADD', KEYS[2], '*', 'm', ARGV[13])
redis.call('HSET', KEYS[1], 'next', after, 'last_tick', tick, 'last_id', ARGV[12],
           'last_at', now)
redis.call('HINCRBY', KEYS[1], 'fired', 1)
st[4], st[5] = tick, ARGV[12]
return reply('fired', after)
