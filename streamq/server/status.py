"""Read-only inspection of a namespace: server, queues and workers.

``collect_status`` returns a plain, JSON-able dict (the shape ``streamq status
--json`` prints and the metrics endpoint reads); ``render_status`` draws it with
rich. Nothing here writes to the server. Figures come from two pipelined round
trips however many queues and workers there are.

Shape::

    {"server": {"url", "name", "version", "used_memory", "used_memory_human",
                "maxmemory_policy", "eviction_risk"},
     "queues": [{"queue", "backlog", "pending", "scheduled", "dead", "consumers",
                 "dead_consumers", "oldest_pending_age_s", "throughput_per_min",
                 "stream_memory_bytes"}],
     "workers": [{"id", "host", "pid", "processes", "queues", "succeeded", "failed",
                  "retried", "dead", "started_ms", "last_heartbeat_ms", "alive"}],
     "consumers": [{"queue", "name", "worker", "worker_alive", "pending", "idle_s"}]}

Counts are whole numbers; ``throughput_per_min`` too (tasks finished in the last 60
s, the previous minute's share estimated). A consumer's ``worker`` is the worker id
its name carries (``ids.worker_of``); ``worker_alive`` is that worker's ``alive``
here, False when the worker is no longer listed (it stopped, or died over an hour
ago), and None for a name that is not a streamq worker's. ``dead_consumers`` counts
a queue's consumers whose worker is not alive: their pending messages wait to be
reclaimed, and recovery removes them from the group.
"""

from __future__ import annotations

import time
from typing import Any

from ..base import keys
from ..base.errors import BrokerConnectionError, BrokerError
from ..base.ids import parse_worker_id, worker_of
from ..base.partitions import logical
from ..base.settings import Settings
from .broker import as_str
from .connection import Connection, translated
from .registry import DEAD_WORKER_LISTED_MS

ALIVE_HEARTBEATS = 2
"""A worker is alive while its last heartbeat is at most this many periods old."""
FINISHED = ("succeeded", "failed", "dead")
"""Outcomes counted by ``throughput_per_min`` (a retry is not a finished task)."""


def collect_status(connection: Connection, settings: Settings, *, now: float | None = None
                   ) -> dict[str, Any]:
    """Everything ``streamq status`` shows, as a JSON-able dict (see the module doc).

    ``now`` (epoch seconds) is for tests; it defaults to this machine's clock, the
    clock workers stamp heartbeats and stats minutes with.
    """
    now = time.time() if now is None else now
    ns = settings.namespace
    client = connection.client
    pipe = client.pipeline(transaction=False)
    if connection.is_cluster:  # INFO is per node: one of each, memory summed
        server_info, memory = _cluster_info(client)
    else:
        pipe.info("server")
        pipe.info("memory")
    pipe.smembers(keys.queues(ns))
    pipe.zrangebyscore(keys.workers(ns), int(now * 1000) - DEAD_WORKER_LISTED_MS, "+inf",
                       withscores=True)
    if connection.is_cluster:
        queue_names, registered = pipe.execute()
    else:
        server_info, memory, queue_names, registered = pipe.execute()
    queues = sorted(as_str(q) for q in queue_names)
    workers = [(as_str(w), int(score)) for w, score in registered]

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
    hb_default = settings.heartbeat_s
    worker_docs = [_worker_doc(wid, score, replies[first_worker + i], hb_default, now)
                   for i, (wid, score) in enumerate(workers)]
    worker_docs.sort(key=lambda w: w["id"])
    alive = {w["id"]: bool(w["alive"]) for w in worker_docs}
    consumer_docs: list[dict[str, Any]] = []
    queue_docs = _with_totals([_queue_doc(q, replies[i * per:(i + 1) * per], now, alive,
                                          consumer_docs) for i, q in enumerate(queues)])
    return {
        "server": {
            "url": connection.masked_url,
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
        "consumers": consumer_docs,
    }


_QUEUE_REPLIES = 9


def _cluster_info(client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server section of one primary, and the memory of all primaries: used
    memory summed, the eviction policy of one that does not say ``noeviction``."""
    with translated(client.streamq_url):
        nodes = client.primaries()
        infos = [(n.info("server"), n.info("memory")) for n in nodes]
    server = dict(infos[0][0], nodes=len(nodes))
    used = sum(int(m.get("used_memory", 0)) for _, m in infos)
    policies = [m.get("maxmemory_policy") for _, m in infos]
    policy = next((p for p in policies if p != "noeviction"), policies[0])
    return server, {"used_memory": used, "used_memory_human": f"{used / 2**20:.2f}M",
                    "maxmemory_policy": policy}


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


def _queue_doc(queue: str, r: list[Any], now: float, alive: dict[str, bool],
               consumer_docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The doc of one queue; its consumers are appended to ``consumer_docs``."""
    xlen, summary, oldest, delayed, dead, consumers, memory, cur, prev = \
        (_ok(x) for x in r)
    mine = [_consumer_doc(queue, c, alive) for c in consumers or ()
            if isinstance(c, dict)]
    mine.sort(key=lambda c: c["name"])
    consumer_docs += mine
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
        "consumers": len(mine),
        "dead_consumers": sum(1 for c in mine if c["worker_alive"] is False),
        "oldest_pending_age_s": age,
        "throughput_per_min": round(throughput),
        "stream_memory_bytes": int(memory or 0),
    }


_SUMMED = ("backlog", "pending", "scheduled", "dead", "consumers", "dead_consumers",
           "throughput_per_min", "stream_memory_bytes")


def _with_totals(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The queue docs with, for a partitioned queue, a total row (``partitions``: how
    many) before its partitions' rows (``partition_of``: the queue they make up)."""
    out: list[dict[str, Any]] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        base = logical(doc["queue"])
        if base == doc["queue"]:
            out.append(doc)
        else:
            groups.setdefault(base, []).append(dict(doc, partition_of=base))
    for base, parts in groups.items():
        ages = [p["oldest_pending_age_s"] for p in parts if p["oldest_pending_age_s"]]
        total = {"queue": base, **{f: sum(p[f] for p in parts) for f in _SUMMED},
                 "oldest_pending_age_s": max(ages) if ages else None,
                 "partitions": len(parts)}
        out += [total, *parts]
    out.sort(key=lambda d: (d.get("partition_of") or d["queue"], "partition_of" in d))
    return out


def _consumer_doc(queue: str, info: dict[Any, Any], alive: dict[str, bool]
                  ) -> dict[str, Any]:
    c = {as_str(k): v for k, v in info.items()}
    name = as_str(c.get("name", b""))
    worker = worker_of(name)
    known = parse_worker_id(worker) is not None and worker != name
    return {"queue": queue, "name": name, "worker": worker if known else None,
            "worker_alive": alive.get(worker, False) if known else None,
            "pending": _int(c.get("pending")) or 0,
            "idle_s": round((_int(c.get("idle")) or 0) / 1000, 1)}


def _worker_doc(worker_id: str, score: int, raw: Any, hb_default: float, now: float
                ) -> dict[str, Any]:
    h = {as_str(k): as_str(v) for k, v in (_ok(raw) or {}).items()}
    # The hash expires a few heartbeats after a worker dies; its id still tells
    # where it ran ("host:pid:token").
    parsed = parse_worker_id(worker_id)
    host = h.get("host") or (parsed.host if parsed else None)
    pid = _int(h.get("pid")) or (parsed.pid if parsed else None)
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


def _config_policy(client: Any) -> str | None:
    try:
        reply = client.config_get("maxmemory-policy")
    except BrokerError:  # CONFIG is often disabled on managed servers
        return None
    value = reply.get("maxmemory-policy")
    return as_str(value) if value is not None else None


def _ok(reply: Any) -> Any:
    """A pipeline reply, or None for a server error such as a missing stream or group."""
    if isinstance(reply, BrokerError) and not isinstance(reply, BrokerConnectionError):
        return None
    if isinstance(reply, Exception):
        raise reply
    return reply


def _sum(values: Any) -> int:
    return sum(int(v) for v in values or () if v is not None)


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
