"""Read-only inspection of a namespace: server, queues and workers.

``collect_status`` returns a plain, JSON-able dict (the shape ``streamq status
--json`` prints and the metrics endpoint reads); ``render_status`` draws it with
rich. Nothing here writes to the server. Figures come from two pipelined round
trips however many queues and workers there are.

Shape::

    {"server": {"url", "name", "version", "used_memory", "used_memory_human",
                "maxmemory_policy", "eviction_risk"},
     "queues": [{"queue", "backlog", "pending", "scheduled", "dead", "consumers",
                 "oldest_pending_age_s", "throughput_per_min", "stream_memory_bytes"}],
     "workers": [{"id", "host", "pid", "processes", "queues", "succeeded", "failed",
                  "retried", "dead", "started_ms", "last_heartbeat_ms", "alive"}]}
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import redis

from . import keys

if TYPE_CHECKING:
    from rich.console import Console

    from .app import StreamQ

DEAD_WORKER_LISTED_MS = 3600 * 1000
"""A worker whose last heartbeat is older than this is no longer listed."""
ALIVE_HEARTBEATS = 2
"""A worker is alive while its last heartbeat is at most this many periods old."""
FINISHED = ("succeeded", "failed", "dead")
"""Outcomes counted by ``throughput_per_min`` (a retry is not a finished task)."""


def collect_status(app: StreamQ, *, now: float | None = None) -> dict[str, Any]:
    """Everything ``streamq status`` shows, as a JSON-able dict (see the module doc).

    ``now`` (epoch seconds) is for tests; it defaults to this machine's clock, the
    clock workers stamp heartbeats and stats minutes with.
    """
    now = time.time() if now is None else now
    ns = app.settings.namespace
    with app.broker.errors():
        client = app.broker.client
        pipe = client.pipeline(transaction=False)
        pipe.info("server")
        pipe.info("memory")
        pipe.smembers(keys.queues(ns))
        pipe.zrangebyscore(keys.workers(ns), int(now * 1000) - DEAD_WORKER_LISTED_MS, "+inf",
                           withscores=True)
        server_info, memory, queue_names, registered = pipe.execute()
        queues = sorted(_s(q) for q in queue_names)
        workers = [(_s(w), int(score)) for w, score in registered]

        pipe = client.pipeline(transaction=False)
        for q in queues:
            _queue_commands(pipe, ns, q, now)
        for worker_id, _ in workers:
            pipe.hgetall(keys.worker(ns, worker_id))
        replies = pipe.execute(raise_on_error=False)
        policy = memory.get("maxmemory_policy")
        if policy is None:  # INFO has carried it since Redis 4; CONFIG GET as a fallback
            policy = _config_policy(client)

    per = _QUEUE_REPLIES
    first_worker = len(queues) * per
    queue_docs = [_queue_doc(q, replies[i * per:(i + 1) * per], now)
                  for i, q in enumerate(queues)]
    hb_default = app.settings.heartbeat_s
    worker_docs = [_worker_doc(wid, score, replies[first_worker + i], hb_default, now)
                   for i, (wid, score) in enumerate(workers)]
    worker_docs.sort(key=lambda w: w["id"])
    return {
        "server": {
            "url": app.broker.masked_url,
            "name": str(server_info.get("server_name") or "redis"),
            "version": str(server_info.get("valkey_version") or
                           server_info.get("redis_version") or ""),
            "used_memory": int(memory.get("used_memory", 0)),
            "used_memory_human": str(memory.get("used_memory_human", "")),
            "maxmemory_policy": policy,
            # Any eviction policy may silently drop queued messages or records.
            "eviction_risk": None if policy is None else policy != "noeviction",
        },
        "queues": queue_docs,
        "workers": worker_docs,
    }


_QUEUE_REPLIES = 9


def _queue_commands(pipe: Any, ns: str, queue: str, now: float) -> None:
    """Queue ``_QUEUE_REPLIES`` commands for one queue (read back by ``_queue_doc``)."""
    stream = keys.stream(ns, queue)
    minute = int(now // 60)
    pipe.xlen(stream)
    pipe.xpending(stream, keys.GROUP)
    pipe.xpending_range(stream, keys.GROUP, "-", "+", 1)
    pipe.zcard(keys.delayed(ns, queue))
    pipe.xlen(keys.dead(ns, queue))
    pipe.xinfo_consumers(stream, keys.GROUP)
    pipe.memory_usage(stream)
    pipe.hmget(keys.stats(ns, queue, minute), *FINISHED)
    pipe.hmget(keys.stats(ns, queue, minute - 1), *FINISHED)


def _queue_doc(queue: str, r: list[Any], now: float) -> dict[str, Any]:
    xlen, summary, oldest, delayed, dead, consumers, memory, cur, prev = \
        (_ok(x) for x in r)
    pending = int(summary["pending"]) if isinstance(summary, dict) else 0
    age = None
    if oldest:
        # Idle time of the oldest pending entry: since its last delivery or heartbeat
        # refresh, so it only grows large when the process holding it is gone.
        age = round(int(oldest[0]["time_since_delivered"]) / 1000.0, 3)
    # The last 60 s = this minute so far + the part of the previous minute still inside.
    inside = 1.0 - (now % 60) / 60.0
    throughput = _sum(cur) + _sum(prev) * inside
    return {
        "queue": queue,
        # The stream holds undelivered + in-flight entries (acks delete), so:
        "backlog": max(0, int(xlen or 0) - pending),
        "pending": pending,
        "scheduled": int(delayed or 0),
        "dead": int(dead or 0),
        "consumers": len(consumers) if isinstance(consumers, list) else 0,
        "oldest_pending_age_s": age,
        "throughput_per_min": round(throughput, 2),
        "stream_memory_bytes": int(memory or 0),
    }


def _worker_doc(worker_id: str, score: int, raw: Any, hb_default: float, now: float
                ) -> dict[str, Any]:
    h = {_s(k): _s(v) for k, v in (_ok(raw) or {}).items()}
    # The hash expires a few heartbeats after a worker dies; its id still tells
    # where it ran ("host:pid:token").
    parts = worker_id.rsplit(":", 2)
    host = h.get("host") or (parts[0] if len(parts) == 3 else None)
    pid = _int(h.get("pid")) or (_int(parts[1]) if len(parts) == 3 else None)
    last = max(score, _int(h.get("last_heartbeat_ms")) or 0)
    hb_s = _float(h.get("heartbeat_s")) or hb_default
    return {
        "id": worker_id,
        "host": host,
        "pid": pid,
        "processes": _int(h.get("processes")),
        "queues": [q for q in (h.get("queues") or "").split(",") if q],
        "succeeded": _int(h.get("succeeded")) or 0,
        "failed": _int(h.get("failed")) or 0,
        "retried": _int(h.get("retried")) or 0,
        "dead": _int(h.get("dead")) or 0,
        "started_ms": _int(h.get("started_ms")),
        "last_heartbeat_ms": last,
        "alive": now * 1000 - last <= ALIVE_HEARTBEATS * hb_s * 1000,
    }


def _config_policy(client: redis.Redis) -> str | None:
    try:
        reply = client.config_get("maxmemory-policy")
    except redis.ResponseError:  # CONFIG is often disabled on managed servers
        return None
    value = reply.get("maxmemory-policy")
    return _s(value) if value is not None else None


def _ok(reply: Any) -> Any:
    """A pipeline reply, or None for a server error such as a missing stream or group."""
    if isinstance(reply, redis.ResponseError):
        return None
    if isinstance(reply, Exception):
        raise reply
    return reply


def _sum(values: Any) -> int:
    return sum(int(v) for v in values or () if v is not None)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


# -- rendering ---------------------------------------------------------------------------
def render_status(status: dict[str, Any], console: Console) -> None:
    """Print ``status`` as a server line and tables of queues and workers."""
    console.print(status_renderable(status))


def status_renderable(status: dict[str, Any], *, now: float | None = None) -> Any:
    """The rich renderable ``render_status`` prints (``--watch`` refreshes it)."""
    from rich.console import Group
    from rich.text import Text

    now_ms = int((time.time() if now is None else now) * 1000)
    srv = status["server"]
    line = Text.assemble(("server ", "bold"), srv["url"], f"  {srv['name']} {srv['version']}",
                         f"  memory {srv['used_memory_human']}",
                         f"  maxmemory-policy {srv['maxmemory_policy'] or 'unknown'}")
    if srv["eviction_risk"]:
        line.append("  (may evict queued tasks: set noeviction)", style="bold red")
    queues = _table("queues", "queue", "backlog", "pending", "scheduled", "dead", "consumers",
                    "oldest", "done/min", "memory")
    for q in status["queues"]:
        age = q["oldest_pending_age_s"]
        queues.add_row(q["queue"], str(q["backlog"]), str(q["pending"]), str(q["scheduled"]),
                       Text(str(q["dead"]), style="yellow" if q["dead"] else ""),
                       str(q["consumers"]), "-" if age is None else _duration(age),
                       f"{q['throughput_per_min']:g}", _bytes(q["stream_memory_bytes"]))
    if not status["queues"]:
        queues.add_row("(none)", *[""] * 8)
    workers = _table("workers", "worker", "state", "procs", "queues", "ok", "failed", "retried",
                     "dead", "up", "heartbeat")
    for w in status["workers"]:
        state = Text("alive", style="green") if w["alive"] else Text("dead", style="bold red")
        up = _duration((now_ms - w["started_ms"]) / 1000) if w["started_ms"] else "-"
        workers.add_row(w["id"], state, str(w["processes"] or "-"), ",".join(w["queues"]),
                        str(w["succeeded"]), str(w["failed"]), str(w["retried"]),
                        str(w["dead"]), up,
                        _duration((now_ms - w["last_heartbeat_ms"]) / 1000) + " ago")
    if not status["workers"]:
        workers.add_row("(none)", *[""] * 9)
    return Group(line, queues, workers)


def _table(title: str, name: str, *columns: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    # On a narrow terminal long names fold rather than figures being cut short.
    table.add_column(name, overflow="fold")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns
