"""The Redis key schema: every key streamq touches is named here and nowhere else.

``ns`` is the app's namespace (default ``streamq``); ``{q}`` is the queue name as a
Redis Cluster hash tag, so every key of one queue lives on one slot and the Lua
scripts that move messages between them stay atomic on a cluster.

==================================  ============  =================================================
key                                 type          what / owner / lifetime
==================================  ============  =================================================
``ns:{q}:stream``                   stream        messages waiting or in flight; one field ``m``
                                                  (the encoded Message). Consumer group ``streamq``.
                                                  Entries are deleted when acknowledged.
``ns:{q}:delayed``                  sorted set    task id -> due time (ms); countdown/eta/retries.
``ns:{q}:delayed:msg``              hash          task id -> encoded Message for ``delayed``.
``ns:{q}:dead``                     stream        dead letters: ``m`` plus ``reason``, ``task``,
                                                  ``id``, ``at_ms``; kept until requeued/purged.
``ns:result:<task id>``             hash          the task's record (status, result, error...);
                                                  TTL ``result_ttl`` refreshed on every change.
``ns:done:<task id>``               list          one element pushed when a record that a waiter
                                                  marked (field ``waiting``) turns final (the
                                                  outcome; the result on success); TTL 10 s;
                                                  ``AsyncResult.get`` blocks on it (BLMOVE
                                                  onto itself, so it is never consumed).
                                                  TTL: min(result_ttl, 10 s).
``ns:queues``                       set           every queue name ever enqueued to.
``ns:workers``                      sorted set    worker id -> last heartbeat (ms).
``ns:worker:<worker id>``           hash          worker description; TTL = a few heartbeats.
``ns:{q}:stats:<minute>``           hash          per-minute counters (done/failed) for status;
                                                  TTL 1 hour.
==================================  ============  =================================================
"""

from __future__ import annotations

GROUP = "streamq"
"""The one consumer group every worker of every queue reads through."""


def _q(ns: str, queue: str) -> str:
    return f"{ns}:{{{queue}}}"


def stream(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:stream"


def delayed(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:delayed"


def delayed_messages(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:delayed:msg"


def dead(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:dead"


def stats(ns: str, queue: str, minute: int) -> str:
    return f"{_q(ns, queue)}:stats:{minute}"


def result(ns: str, task_id: str) -> str:
    return f"{ns}:result:{task_id}"


def done(ns: str, task_id: str) -> str:
    return f"{ns}:done:{task_id}"


def queues(ns: str) -> str:
    return f"{ns}:queues"


def workers(ns: str) -> str:
    return f"{ns}:workers"


def worker(ns: str, worker_id: str) -> str:
    return f"{ns}:worker:{worker_id}"
