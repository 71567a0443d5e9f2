"""``Ceiling``: raw redis-py loops on one connection, the yardstick of ``streamq bench``.

What streamq's own path costs is only meaningful next to the same commands sent with
nothing in between, on the same server, in the same process: one plain redis-py
client (RESP2, 60 s socket timeout, no retry wrapper, no streamq client subclass),
each loop timed around exactly its commands. Every method raises streamq errors,
never redis-py's (``translated``), so the bench above needs no ``redis`` import.
The bench's few reads of streamq's own keys (stats counters, registered workers) go
through the same client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import redis

from ..base import keys
from ..base.clusterurl import is_cluster
from ..base.errors import ConfigurationError
from ..base.settings import mask_url
from .broker import as_str
from .cluster import make_cluster_client
from .connection import translated

BATCH = 100
"""Entries per pipelined XADD and per XREADGROUP of the raw drain."""
GROUP = "bench"
CONSUMER = "c"
SOCKET_TIMEOUT_S = 60
_DELETE_CHUNK = 1000


class Ceiling:
    """One raw redis-py connection to ``url`` (made on first use; ``close`` drops it).

    The timing methods return seconds and call ``check()`` as the bench's loops
    always have (every 64 steps, after the step), so a time limit can interrupt
    them; ``check`` may raise."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._cluster = is_cluster(url)
        try:
            # Any: redis-py's command signatures type their replies as Awaitable | Any.
            self._r: Any = make_cluster_client(url, {"socket_timeout": SOCKET_TIMEOUT_S,
                                                     "protocol": 2}) if self._cluster else \
                redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, protocol=2)
        except ValueError as exc:
            raise ConfigurationError(f"invalid server URL {mask_url(url)!r}: {exc}") from None

    def _on(self, key: str) -> Any:
        """The client for ``key``: on a cluster, its node's own (a ceiling measures the
        server, not redis-py's routing)."""
        return self._r.get_redis_connection(self._r.get_node_from_key(key)) \
            if self._cluster else self._r

    def close(self) -> None:
        self._r.close()

    # -- the ceilings ------------------------------------------------------------------
    def xadd_single(self, stream: str, fields: dict[str, Any], count: int,
                    check: Callable[[], None]) -> float:
        """Seconds for ``count`` XADDs to ``stream``, one round trip each."""
        r = self._on(stream)
        with translated(self.url):
            return _timed(count, lambda: r.xadd(stream, fields), check)

    def xadd_pipelined(self, stream: str, fields: dict[str, Any], count: int,
                       check: Callable[[], None]) -> float:
        """Seconds for ``count`` XADDs to ``stream`` in non-transactional pipelines of
        ``BATCH``."""
        r = self._on(stream)

        def xadd_pipelined() -> None:
            for start in range(0, count, BATCH):
                pipe = r.pipeline(transaction=False)
                for _ in range(min(BATCH, count - start)):
                    pipe.xadd(stream, fields)
                pipe.execute()

        with translated(self.url):
            return _timed(1, xadd_pipelined, check)

    def create_group(self, stream: str) -> None:
        """The consumer group ``drain`` reads ``stream`` through, from its start."""
        with translated(self.url):
            self._on(stream).xgroup_create(stream, GROUP, "0")

    def drain(self, stream: str, count: int, check: Callable[[], None]) -> float:
        """Seconds to read, ack and delete ``count`` entries of ``stream``: XREADGROUP
        COUNT ``BATCH`` (one round trip), then XACK + XDEL of that batch pipelined (one
        round trip), until ``count`` are done or the stream has no more."""
        r = self._on(stream)
        with translated(self.url):
            done, t0 = 0, time.perf_counter()
            while done < count and (entries := [
                    e for _s, es in r.xreadgroup(GROUP, CONSUMER, {stream: ">"},
                                                  count=min(BATCH, count - done)) or ()
                    for e in es]):
                ids = [entry_id for entry_id, _ in entries]
                r.pipeline(transaction=False).xack(stream, GROUP, *ids) \
                    .xdel(stream, *ids).execute()
                done += len(ids)
                check()
            return time.perf_counter() - t0

    # -- what the bench reads besides ------------------------------------------------
    def succeeded(self, ns: str, queue: str, since_minute: int) -> int:
        """Tasks of ``queue`` counted as succeeded in the per-minute stats, from the
        minute before ``since_minute`` to the one after now (clock skew either way)."""
        with translated(self.url):
            pipe = self._r.pipeline(transaction=False)
            for minute in range(since_minute - 1, int(time.time() // 60) + 2):
                pipe.hget(keys.stats(ns, queue, minute), "succeeded")
            return sum(int(v) for v in pipe.execute() if v)

    def readers(self, ns: str, queue: str) -> int:
        """How many consumers have read ``queue`` through streamq's group (0 before the
        group exists): each worker process is one once it has made its first read."""
        with translated(self.url):
            try:
                return len(self._r.xinfo_consumers(keys.stream(ns, queue), keys.GROUP))
            except redis.ResponseError:
                return 0

    def workers(self, ns: str) -> list[str]:
        """The ids of the workers registered in namespace ``ns``."""
        with translated(self.url):
            return [as_str(w) for w in self._r.zrange(keys.workers(ns), 0, -1)]

    def versions(self) -> dict[str, Any]:
        """The server's name and version, and those of redis-py and hiredis."""
        from redis.utils import HIREDIS_AVAILABLE

        with translated(self.url):
            info = self._r.info("server")
        valkey = str(info["valkey_version"]) if "valkey_version" in info else None
        return {
            "redis_py": metadata.version("redis"), "hiredis": bool(HIREDIS_AVAILABLE),
            "hiredis_version": metadata.version("hiredis") if HIREDIS_AVAILABLE else None,
            "server_name": str(info.get("server_name") or ("valkey" if valkey else "redis")),
            "server_version": valkey or str(info.get("redis_version")),
            "redis_version": str(info.get("redis_version")), "valkey_version": valkey,
        }

    def delete(self, *names: str) -> None:
        with translated(self.url):
            self._r.delete(*names)

    def delete_namespace(self, ns: str) -> int:
        """Delete every key under ``ns:``; returns how many. One UNLINK per key
        (pipelined), so keys of different cluster slots never share a command."""
        with translated(self.url):
            found = list(self._r.scan_iter(match=f"{ns}:*", count=1000))
            deleted = 0
            for i in range(0, len(found), _DELETE_CHUNK):
                pipe = self._r.pipeline(transaction=False)
                for name in found[i:i + _DELETE_CHUNK]:
                    pipe.unlink(name)
                deleted += sum(pipe.execute())
            return deleted


def _timed(steps: int, step: Callable[[], Any], check: Callable[[], None]) -> float:
    """Seconds taken by ``steps`` calls of ``step()`` (``check()`` every 64)."""
    t0 = time.perf_counter()
    for i in range(steps):
        step()
        if not i & 63:
            check()
    return time.perf_counter() - t0
