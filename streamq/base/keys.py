"""The Redis key schema: every key streamq touches is named here and nowhere else.

``ns`` is the app's namespace (default ``streamq``); ``{q}`` is the queue name as a
Redis Cluster hash tag. Every key of one queue, and every key of each task in it,
lives on that one slot, so each Lua script and each MULTI/EXEC touches one slot.

==================================  ============  =================================================
key                                 type          what / owner / lifetime
==================================  ============  =================================================
``ns:{q}:stream``                   stream        messages waiting or in flight; one field ``m``
                                                  (the encoded Message). Consumer group ``streamq``.
                                                  Entries are deleted when acknowledged.
``ns:{q}:delayed``                  sorted set    task id -> due time (ms); countdown/eta/retries.
``ns:{q}:delayed:msg``              hash          task id -> encoded Message for ``delayed``.
``ns:{q}:dead``                     stream        dead letters: ``m`` plus ``reason``, ``task``,
                                                  ``id``, ``at_ms``, ``deliveries``, ``retries``;
                                                  kept until requeued or purged.
``ns:{q}:stats:<minute>``           hash          per-minute outcome counters for status; 1 hour.
``ns:{q}:result:<task id>``         hash          the task's record (``streamq.data.record``);
                                                  TTL ``result_ttl`` (plus any wait until due),
                                                  refreshed on every change.
``ns:{q}:done:<task id>``           list          the outcome, pushed when a record a waiter
                                                  marked turns final; ``AsyncResult.get``
                                                  blocks on it. TTL min(result_ttl, 10 s).
``ns:{q}:outbox``                   hash          canvas forwards a step's outcome wrote in the same
                                                  step that acknowledged it: item id -> forward
                                                  (``streamq.data.outcome.Forward``); deleted
                                                  once forwarded. TTL ``result_ttl``.
``ns:{q}:outbox:due``               sorted set    item id -> when written (server ms): the sweep
                                                  re-forwards items older than a few seconds.
``ns:{q}:chord:<body id>``          hash          a chord's state, on its body's slot: ``n``,
                                                  ``mode``, ``m`` (the body's message), ``count``,
                                                  ``fired``. TTL ``result_ttl``, refreshed by
                                                  each contribution.
``ns:{q}:chord:<body id>:results``  hash          member index -> its contribution (a result or
                                                  a failure); TTL as the state's.
``ns:{q}:order``                    hash          a partition's per-key order: ``s:<key>`` the last
                                                  number drawn, ``n:<key>`` the next that may run
                                                  (``gate.lua``). TTL ``result_ttl``.
``ns:{q}:park:<key>``               sorted set    a key's calls parked until their turn: number
                                                  -> message. TTL as the parked call's record.
``ns:id:{<task id>}``               string        the queue of a task whose id the caller chose
                                                  (generated ids carry their queue); TTL as
                                                  the record's.
``ns:{q}:periodic:<name>``          hash          a periodic schedule's state (``streamq.server.
                                                  periodic``): definition in force, next tick,
                                                  last call; TTL 1 day, refreshed by workers.
``ns:queues``                       set           every queue name ever enqueued to.
``ns:partitions``                   hash          partitioned queue -> its number of partitions.
``ns:periodic``                     hash          schedule name -> its queue (the index).
``ns:workers``                      sorted set    worker id -> last heartbeat (ms).
``ns:worker:<worker id>``           hash          worker description and counters; 1 hour.
==================================  ============  =================================================

Task ids route themselves: a generated id is 32 hex digits, ``@``, and the queue
(``3f2a...6f70@default``), so ``AsyncResult(id)`` finds the record's slot from the id
alone. An id the caller chose (``apply_async(task_id=...)``) is kept as given, and
its queue is found through ``ns:id:{<id>}``. See ``streamq.base.ids``.
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


def record(ns: str, queue: str, task_id: str) -> str:
    return f"{_q(ns, queue)}:result:{task_id}"


def done(ns: str, queue: str, task_id: str) -> str:
    return f"{_q(ns, queue)}:done:{task_id}"


def outbox(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:outbox"


def outbox_due(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:outbox:due"


def chord(ns: str, queue: str, body_id: str) -> str:
    """A chord's state, on the slot of its body's queue."""
    return f"{_q(ns, queue)}:chord:{body_id}"


def chord_results(ns: str, queue: str, body_id: str) -> str:
    return f"{_q(ns, queue)}:chord:{body_id}:results"


def task_queue(ns: str, task_id: str) -> str:
    """Where a caller-chosen task id records its queue."""
    return f"{ns}:id:{{{task_id}}}"


def queues(ns: str) -> str:
    return f"{ns}:queues"


def workers(ns: str) -> str:
    return f"{ns}:workers"


def worker(ns: str, worker_id: str) -> str:
    return f"{ns}:worker:{worker_id}"


def periodic(ns: str, queue: str, name: str) -> str:
    """A periodic schedule's state, on the slot of the queue its calls go to."""
    return f"{_q(ns, queue)}:periodic:{name}"


def periodic_index(ns: str) -> str:
    return f"{ns}:periodic"


def partitions(ns: str) -> str:
    return f"{ns}:partitions"


def order(ns: str, queue: str) -> str:
    return f"{_q(ns, queue)}:order"


def parked(ns: str, queue: str, key: str) -> str:
    """Also built by outcomes.lua from ``order``'s name: keep the two in step."""
    return f"{_q(ns, queue)}:park:{key}"
