"""The worker registry: who is alive (``ns:workers``) and what each worker is
(``ns:worker:<id>``), written by heartbeats and read by recovery and status."""

from __future__ import annotations

import time
from typing import Any, cast

from ..base import keys
from .broker import as_str
from .transport import Transport

DEAD_WORKER_LISTED_MS = 3600 * 1000
"""A worker silent this long is pruned from the registry (and no longer listed)."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    def __init__(self, transport: Transport, namespace: str) -> None:
        self.transport = transport
        self.connection = transport.connection
        self.ns = namespace

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        now = now_ms()
        pipe = self.connection.client.pipeline(transaction=False)
        key = keys.worker(self.ns, worker_id)
        # redis-py's mapping type is invariant in its key (FieldT), so a dict[str, ...]
        # is refused though every str is a FieldT.
        pipe.hset(key, mapping=dict(info, last_heartbeat_ms=now))  # type: ignore[arg-type]
        # Kept for the hour a dead worker stays listed by `streamq status`.
        pipe.expire(key, DEAD_WORKER_LISTED_MS // 1000)
        pipe.zadd(keys.workers(self.ns), {worker_id: now})
        pipe.execute()

    def live(self, heartbeats: int = 3, default_heartbeat_s: float = 5.0) -> set[str]:
        """Workers that heartbeated within ``heartbeats`` of their own heartbeat period
        (registered with them): a worker with a short period must not take one with a
        long period for dead."""
        client = self.connection.client
        now = now_ms()
        scored = cast("list[tuple[bytes, float]]", client.zrangebyscore(
            keys.workers(self.ns), now - DEAD_WORKER_LISTED_MS, "+inf", withscores=True))
        if not scored:
            return set()
        pipe = client.pipeline(transaction=False)
        for worker_id, _ in scored:
            pipe.hget(keys.worker(self.ns, as_str(worker_id)), "heartbeat_s")
        periods = pipe.execute(raise_on_error=False)
        live = set()
        for (worker_id, score), period in zip(scored, periods, strict=True):
            try:
                hb_s = float(period) if isinstance(period, bytes | str) else default_heartbeat_s
            except ValueError:
                hb_s = default_heartbeat_s
            if now - int(score) <= heartbeats * hb_s * 1000:
                live.add(as_str(worker_id))
        return live

    def deregister(self, worker_id: str) -> None:
        pipe = self.connection.client.pipeline(transaction=False)
        pipe.zrem(keys.workers(self.ns), worker_id)
        pipe.delete(keys.worker(self.ns, worker_id))
        pipe.execute()

    def prune(self) -> None:
        """Forget workers that stopped heartbeating over an hour ago (crashed hosts)."""
        self.connection.client.zremrangebyscore(keys.workers(self.ns), "-inf",
                                                now_ms() - DEAD_WORKER_LISTED_MS)
