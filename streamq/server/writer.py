"""The outcome writer: a batch of outcome values becomes one write.

Per queue, one ``outcomes.lua`` call stores the records, moves retries to the delayed
set and failures to dead letters, hands entries back and acknowledges the rest; the
per-minute stats and the worker's counters follow as HINCRBYs. The caller sends the
result with ``Transport.run`` or lets the next read ride on it (``Broker.read``):
one round trip per batch. Every write in it is idempotent or guarded by an ownership
check, so a batch whose write failed can be written again.

A canvas step's outcome carries its forwards (``Forward``): the same script call
writes them into the queue's outbox, and each is sent right behind it, on the
target's slot, as a best-effort command (a refused forward must not fail the batch:
it stays in the outbox). Those the server confirmed (``confirm``) are deleted from
the outbox with the next write; the housekeeping sweep (``streamq.server.outbox``)
forwards again whatever stays there longer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from ..base import keys
from ..base.partitions import logical
from ..base.settings import Settings
from ..data import record
from ..data.outcome import (
    COUNTED,
    Dead,
    Failed,
    Forward,
    Gone,
    Outcome,
    Released,
    Retried,
    Succeeded,
)
from .transport import Packed

STATS_TTL_S = 3600
FRESH_S = 0.05
"""An entry read this recently cannot have been reclaimed by anyone: every claim waits
for at least this much idle time (``Settings`` refuses a shorter ``claim_after_s`` or
``heartbeat_s``), so its acknowledgement skips the ownership check."""


def is_partition(queue: str) -> bool:
    return logical(queue) != queue


class OutcomeWriter:
    """Packs outcomes for one consumer (``worker``: the name stored in records)."""

    def __init__(self, settings: Settings, consumer: str, worker_key: str | None = None
                 ) -> None:
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self.done_ttl_s = min(settings.result_ttl, record.DONE_TTL_S)
        self.consumer = consumer
        self.worker_key = worker_key
        self._forwarded: dict[str, list[str]] = {}
        """Per queue, outbox item/value pairs whose forward was confirmed."""
        self._lock = threading.Lock()  # the consumer and housekeeping both write
        self.send_forwards = True
        """False only for a test's crash hook: forwards stay in the outbox, unsent."""

    def pack(self, outcomes: Iterable[Outcome], pipe: Packed | None = None) -> Packed:
        """Queue the write of ``outcomes`` on ``pipe`` (a new one by default)."""
        pipe = pipe if pipe is not None else Packed()
        if self._forwarded:
            self.pack_forwarded(pipe)
        by_queue: dict[str, list[Outcome]] = {}
        for o in outcomes:
            by_queue.setdefault(o.delivery.queue, []).append(o)
        counts: dict[tuple[str, str], int] = {}
        forwards: list[tuple[str, Forward, str]] = []
        for queue, items in by_queue.items():
            self._pack_queue(pipe, queue, items, counts, forwards)
        for queue, f, value in forwards if self.send_forwards else ():
            pipe.forwards.append((len(pipe.commands), queue, (f.item, value)))
            pipe.optional.add(len(pipe.commands))
            pipe.script(f.script, f.keys, f.args)
        if counts:
            minute = int(time.time() // 60)
            for (queue, name), n in counts.items():
                stats_key = keys.stats(self.ns, queue, minute)
                pipe.best_effort("HINCRBY", stats_key, name, n)
                pipe.best_effort("EXPIRE", stats_key, STATS_TTL_S)
                if self.worker_key:
                    pipe.best_effort("HINCRBY", self.worker_key, name, n)
        return pipe

    def confirm(self, pipe: Packed) -> None:
        """After ``pipe`` ran: note its forwards the server confirmed, for deletion
        from the outbox with the next write (``pack_forwarded``)."""
        replies = pipe.replies
        if not pipe.forwards or replies is None:
            return
        with self._lock:
            for i, queue, (item, value) in pipe.forwards:
                if not isinstance(replies[i], Exception):
                    self._forwarded.setdefault(queue, []).extend((item, value))
        pipe.forwards = []

    def pack_forwarded(self, pipe: Packed) -> None:
        """Delete the confirmed forwards from their outboxes (best effort: an item
        left there is forwarded again by the sweep, which changes nothing)."""
        with self._lock:
            done, self._forwarded = self._forwarded, {}
        for queue, pairs in done.items():
            pipe.optional.add(len(pipe.commands))
            pipe.script("outbox", [keys.outbox(self.ns, queue), keys.outbox_due(self.ns, queue)],
                        ["done", *pairs])

    def _pack_queue(self, pipe: Packed, queue: str, items: list[Outcome],
                    counts: dict[tuple[str, str], int],
                    forwards: list[tuple[str, Forward, str]]) -> None:
        ns = self.ns
        keys_ = [keys.stream(ns, queue), keys.delayed(ns, queue),
                 keys.delayed_messages(ns, queue), keys.dead(ns, queue)]
        fresh_after = time.monotonic() - FRESH_S
        check = int(any(o.delivery.read_at < fresh_after for o in items
                        if isinstance(o, Succeeded | Gone | Released)))
        args: list[Any] = [keys.GROUP, self.consumer, self.consumer, self.ttl_s,
                           self.done_ttl_s, check]
        now = int(time.time() * 1000)
        for o in items:
            d = o.delivery
            name = COUNTED.get(type(o))
            if name is not None:
                counts[queue, name] = counts.get((queue, name), 0) + 1
            if isinstance(o, Succeeded) and not o.stored:
                args += ("A", d.entry_id)
            elif isinstance(o, Succeeded):
                keys_ += (keys.record(ns, queue, o.task_id), keys.done(ns, queue, o.task_id))
                args += ("S", d.entry_id, o.result, o.content_type,
                         "" if o.content_encoding == "utf-8" else o.content_encoding,
                         d.deliveries, o.started_ms, int(o.runtime_s * 1000))
                if d.order is not None:
                    self._pack_release(queue, d.order, keys_, args)
                if o.forward:
                    self._pack_outbox(queue, o.forward, keys_, args, forwards)
            elif isinstance(o, Retried):
                keys_ += (keys.record(ns, queue, o.task_id), keys.done(ns, queue, o.task_id))
                args += ("R", d.entry_id, o.task_id, int(o.countdown_s * 1000), o.message,
                         o.record_ttl_s,
                         len(o.record) // 2, *o.record)
            elif isinstance(o, Failed | Dead):
                task_id = o.task_id or ""
                rec = o.record if task_id and o.record else []
                if task_id:
                    keys_ += (keys.record(ns, queue, task_id), keys.done(ns, queue, task_id))
                args += ("F", d.entry_id, d.raw or b"", o.reason, o.task, task_id, now,
                         d.deliveries, o.retries, len(rec) // 2, *rec)
                if task_id and (d.order is not None or is_partition(queue)):
                    # One that never reached the gate: its record knows its number.
                    self._pack_release(queue, d.order or ("", 0), keys_, args)
                if o.forward:
                    self._pack_outbox(queue, o.forward, keys_, args, forwards)
            elif isinstance(o, Released):
                if d.raw is None:
                    args += ("A", d.entry_id)
                else:
                    args += ("H", d.entry_id, d.raw)
            elif isinstance(o, Gone):
                args += ("A", d.entry_id)
        pipe.script("outcomes", keys_, args)

    def _pack_release(self, queue: str, order: tuple[str, int], keys_: list[str],
                      args: list[Any]) -> None:
        """The 'K' part of a keyed call's final outcome: the key's next call may run."""
        keys_.append(keys.order(self.ns, queue))
        args += ("K", order[0], order[1])

    def _pack_outbox(self, queue: str, items: tuple[Forward, ...], keys_: list[str],
                     args: list[Any], forwards: list[tuple[str, Forward, str]]) -> None:
        """The 'O' part of an outcome: its forwards into the outbox, in its step."""
        keys_ += (keys.outbox(self.ns, queue), keys.outbox_due(self.ns, queue))
        args += ("O", len(items))
        for f in items:
            value = f.encode()
            args += (f.item, value)
            forwards.append((queue, f, value))
