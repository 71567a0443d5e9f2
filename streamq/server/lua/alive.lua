-- A worker's liveness heartbeat: its score in the worker registry.
-- KEYS[1] the registry (sorted set), ARGV[1] worker id, ARGV[2] now (ms)
-- Invariant: runs even on a full server (allow-oom), so a live worker is never taken
-- for dead there and its running tasks reclaimed.
return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
