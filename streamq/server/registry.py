"""The worker registry: who is alive (``ns:workers``) and what each worker is
(``ns:worker:<id>``), written by heartbeats and read by recovery, status, the
diagnosis of a ``get()`` that timed out and ``streamq enqueue``.

A worker's hash holds its description (``host``, ``pid``, ``processes``,
``queues`` comma-separated, ``tasks`` a JSON list of the task names it registered,
``started_ms``, ``heartbeat_s``), ``last_heartbeat_ms``, ``last_read_ms`` (written by
a process's heartbeat when that process read its queues since its previous one: never
per read) and outcome counters.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, cast

from ..base import keys
from .broker import as_str
from .transport import Transport

DEAD_WORKER_LISTED_MS = 3600 * 1000
"""A worker silent this long is pruned from the registry (and no longer listed)."""


def now_ms() -> int:
    return int(time.time() * 1000)


READ_WINDOW_S = 60.0
"""A worker "reads" a queue when one of its processes read it this recently."""


class WorkerEntry(NamedTuple):
    """A live worker as its registration describes it."""

    id: str
    queues: tuple[str, ...]
    tasks: frozenset[str] | None
    """The task names it registered; None when it does not say (an older version)."""
    last_read_ms: int | None
    """When one of its processes last read its queues (by its own clock)."""
    last_heartbeat_ms: int

    def read_lately(self, within_s: float = READ_WINDOW_S) -> bool:
        """Whether it read its queues within ``within_s`` before its last heartbeat
        (both by its own clock: no skew between hosts). True when it does not say (an
        older version, or a worker whose processes have not sent a heartbeat yet)."""
        return self.last_read_ms is None or \
            self.last_heartbeat_ms - self.last_read_ms <= within_s * 1000


def encode_tasks(names: list[str]) -> str:
    """The ``tasks`` field of a registration."""
    return json.dumps(sorted(names))


def _decode_tasks(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(names, list):
        return None
    return frozenset(n for n in names if isinstance(n, str))


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


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

    def live_workers(self, heartbeats: int = 3, default_heartbeat_s: float = 5.0
                     ) -> list[WorkerEntry]:
        """The live workers (as ``live``) with what they registered, by id."""
        ids = sorted(self.live(heartbeats, default_heartbeat_s))
        if not ids:
            return []
        pipe = self.connection.client.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hgetall(keys.worker(self.ns, worker_id))
        out = []
        for worker_id, raw in zip(ids, pipe.execute(raise_on_error=False), strict=True):
            if not isinstance(raw, dict) or not raw:  # expired meanwhile, or an error
                continue
            h = {as_str(k): as_str(v) for k, v in raw.items()}
            out.append(WorkerEntry(
                worker_id, tuple(q for q in (h.get("queues") or "").split(",") if q),
                _decode_tasks(h.get("tasks")), _int(h.get("last_read_ms")),
                _int(h.get("last_heartbeat_ms")) or 0))
        return out

    def deregister(self, worker_id: str) -> None:
        pipe = self.connection.client.pipeline(transaction=False)
        pipe.zrem(keys.workers(self.ns), worker_id)
        pipe.delete(keys.worker(self.ns, worker_id))
        pipe.execute()

    def prune(self) -> None:
        """Forget workers that stopped heartbeating over an hour ago (crashed hosts)."""
        self.connection.client.zremrangebyscore(keys.workers(self.ns), "-inf",
                                                now_ms() - DEAD_WORKER_LISTED_MS)
