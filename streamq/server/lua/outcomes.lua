-- Write one queue's outcomes of a batch in one step: records, moves, acknowledgements.
-- KEYS[1] stream, KEYS[2] delayed (zset), KEYS[3] delayed messages (hash),
-- KEYS[4] dead letters; then, for each outcome that has a task record, its record
-- and its completion list, in the order of the outcomes.
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] worker, ARGV[4] record TTL (s),
-- ARGV[5] completion TTL (s), ARGV[6] 1 to check that acknowledged entries are still
-- ours ('0' when all were read too recently for anyone to have reclaimed them); then
-- per outcome a kind and its values:
--   'S' entry, result, ct, ce ('' = utf-8), deliveries, started_ms, runtime_ms  (success)
--   'R' entry, task id, delay ms, next message, record TTL, n, n field/value pairs
--       (a retry, due that long after the server's clock)
--   'F' entry, message, reason, task, task id ('' = no record), at ms, deliveries,
--       retries, n, n field/value pairs                                        (dead letter)
--   'A' entry                                                    (acknowledge only)
--   'H' entry, message                                (hand back, as a new entry)
--   'O' n, n item/forward pairs: the canvas forwards of the 'S' or 'F' before it, into
--       the outbox (the next two keys: outbox, outbox due), in the same step
--   'K' partition key, number (0: read both from the record of the 'S' or 'F' just
--       before): that step finished the key's call of that number, so the key's next
--       may run (the next key: the partition's order hash; see gate.lua), and if it
--       is parked it goes back into the stream
-- Invariants: a record is complete before its completion is pushed and before its
-- entry is acknowledged, so a waiter that wakes finds it final and a refused write
-- acknowledges nothing; an acknowledgement, retry, dead letter or hand-back happens
-- only while the entry is still this consumer's (another that reclaimed it owns its
-- fate), and moves the message into exactly one place; a canvas step's forwards are in
-- the outbox whenever its outcome is written, so none is lost to a crash after it.
-- Returns the number of outcomes written.
local group, consumer, worker = ARGV[1], ARGV[2], ARGV[3]
local ttl, done_ttl = ARGV[4], ARGV[5]
local stream = KEYS[1]
local acks = {}
local k, pos, n = 5, 7, 0
local check = ARGV[6] == '1'
local written = false  -- the last 'S' or 'F' was written (for its 'O')

local function mine(entry)
  return #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) == 1
end

local function drop(entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

local function hset(key, first, count)
  if count > 0 then redis.call('HSET', key, unpack(ARGV, first, first + 2 * count - 1)) end
end

while pos <= #ARGV do
  local kind = ARGV[pos]
  if kind == 'S' then
    local entry, result, ct, ce = ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4]
    local rec = KEYS[k]
    if ce == '' then
      redis.call('HSET', rec, F.status, S.SUCCESS, F.result, result, F.result_ct, ct,
                 F.deliveries, ARGV[pos + 5], F.started_ms, ARGV[pos + 6],
                 F.runtime_ms, ARGV[pos + 7], F.worker, worker)
    else
      redis.call('HSET', rec, F.status, S.SUCCESS, F.result, result, F.result_ct, ct,
                 F.result_ce, ce, F.deliveries, ARGV[pos + 5], F.started_ms, ARGV[pos + 6],
                 F.runtime_ms, ARGV[pos + 7], F.worker, worker)
    end
    redis.call('EXPIRE', rec, ttl)
    complete(rec, KEYS[k + 1], completion(S.SUCCESS, result, ct, ce ~= '' and ce or nil),
             done_ttl)
    acks[#acks + 1] = entry
    written = true
    k, pos = k + 2, pos + 8
  elseif kind == 'R' then
    local entry, task_id = ARGV[pos + 1], ARGV[pos + 2]
    local count = tonumber(ARGV[pos + 6])
    if mine(entry) then
      -- Due by the server's clock, the one promote.lua reads: workers' clocks differ.
      local t = redis.call('TIME')
      local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        + tonumber(ARGV[pos + 3])
      if count > 0 then  -- no fields: the task keeps no record (ignore_result)
        hset(KEYS[k], pos + 7, count)
        redis.call('HSET', KEYS[k], F.eta_ms, due)
        redis.call('EXPIRE', KEYS[k], ARGV[pos + 5])
      end
      redis.call('HSET', KEYS[3], task_id, ARGV[pos + 4])
      redis.call('ZADD', KEYS[2], due, task_id)
      drop(entry)
    end
    k, pos = k + 2, pos + 7 + 2 * count
  elseif kind == 'F' then
    local entry, task_id = ARGV[pos + 1], ARGV[pos + 5]
    local count = tonumber(ARGV[pos + 9])
    written = mine(entry)
    if written then
      redis.call('XADD', KEYS[4], '*', 'm', ARGV[pos + 2], 'reason', ARGV[pos + 3],
                 'task', ARGV[pos + 4], 'id', task_id, 'at_ms', ARGV[pos + 6],
                 'deliveries', ARGV[pos + 7], 'retries', ARGV[pos + 8])
      if task_id ~= '' and count > 0 then  -- no fields: no record (ignore_result)
        hset(KEYS[k], pos + 10, count)
        redis.call('EXPIRE', KEYS[k], ttl)
        complete(KEYS[k], KEYS[k + 1], 'F', done_ttl)
      end
      drop(entry)
    end
    if task_id ~= '' then k = k + 2 end
    pos = pos + 10 + 2 * count
  elseif kind == 'O' then
    local count = tonumber(ARGV[pos + 1])
    if written then
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      for i = pos + 2, pos + 2 * count, 2 do
        redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1])
        redis.call('ZADD', KEYS[k + 1], now, ARGV[i])
      end
      redis.call('EXPIRE', KEYS[k], ttl)
      redis.call('EXPIRE', KEYS[k + 1], ttl)
    end
    k, pos, n = k + 2, pos + 2 + 2 * count, n - 1  -- not an outcome of its own
  elseif kind == 'K' then
    local key, seq = ARGV[pos + 1], tonumber(ARGV[pos + 2])
    if seq == 0 then  -- not known to the worker: from the record of the step before
      local got = redis.call('HMGET', KEYS[k - 2], 'pk', 'seq')
      key, seq = got[1], tonumber(got[2] or '0')
    end
    if written and key and seq and seq > 0 then
      local nxt = tonumber(redis.call('HGET', KEYS[k], 'n:' .. key) or '1')
      if seq >= nxt then  -- once: a repeat of a finished call moves nothing
        redis.call('HSET', KEYS[k], 'n:' .. key, seq + 1)
        -- The key's parked calls: beside the order hash, on its slot (gate.lua).
        local park = string.sub(KEYS[k], 1, -6) .. 'park:' .. key
        local parked = redis.call('ZRANGEBYSCORE', park, seq + 1, seq + 1)
        if #parked > 0 then
          redis.call('ZREM', park, parked[1])
          redis.call('XADD', stream, '*', 'm', parked[1])
        end
      end
    end
    k, pos, n = k + 1, pos + 3, n - 1  -- not an outcome of its own
  elseif kind == 'A' then
    acks[#acks + 1] = ARGV[pos + 1]
    pos = pos + 2
  elseif kind == 'H' then
    local entry = ARGV[pos + 1]
    if mine(entry) then
      redis.call('XADD', stream, '*', 'm', ARGV[pos + 2])
      drop(entry)
    end
    pos = pos + 3
  else
    return redis.error_reply('ERR outcomes.lua: unknown outcome kind ' .. tostring(kind))
  end
  n = n + 1
end
if #acks > 0 and not check then
  redis.call('XACK', stream, group, unpack(acks))
  redis.call('XDEL', stream, unpack(acks))
elseif #acks > 0 then
  -- Acknowledge only entries still ours: one that another consumer reclaimed (this
  -- process was presumed dead) is that consumer's to finish. One XPENDING over the
  -- range of the batch answers for all of them.
  local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
  end
  local lo, hi = acks[1], acks[1]
  local lo_ms, lo_seq = parse(lo)
  local hi_ms, hi_seq = lo_ms, lo_seq
  for i = 2, #acks do
    local ms, seq = parse(acks[i])
    if ms < lo_ms or (ms == lo_ms and seq < lo_seq) then lo, lo_ms, lo_seq = acks[i], ms, seq end
    if ms > hi_ms or (ms == hi_ms and seq > hi_seq) then hi, hi_ms, hi_seq = acks[i], ms, seq end
  end
  local ours = {}
  for _, p in ipairs(redis.call('XPENDING', stream, group, lo, hi, #acks + 10000, consumer)) do
    ours[p[1]] = true
  end
  local owned = {}
  for _, id in ipairs(acks) do
    if ours[id] then owned[#owned + 1] = id end
  end
  if #owned > 0 then
    redis.call('XACK', stream, group, unpack(owned))
    redis.call('XDEL', stream, unpack(owned))
  end
end
return n
