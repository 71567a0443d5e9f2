"""The server side of canvas (``streamq.api.canvas``): what a chain, group or chord
writes when it is created, what a chord body reads before it runs, the pipelined
record reads of a ``GroupResult``, and the sweep of a queue's outbox.

Creation writes later things first: every chord's state before any member, every
later step's record (PENDING) before the first step's message, so that a creation
cut short by a crash never runs half a canvas; everything it writes expires after
``result_ttl``. The forwards themselves (``forward.lua``, ``chord.lua``) are sent by
the worker's ``OutcomeWriter`` and, after a crash, by ``sweep``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from ..base import keys
from ..base.ids import queue_of
from ..base.settings import Settings
from ..data import record
from ..data.outcome import Forward
from .broker import as_str
from .transport import Packed, Transport, pack

log = logging.getLogger(__name__)

SWEEP_AGE_MS = 3000
"""An outbox item this old was not confirmed by the worker that wrote it (it died
between writing its outcome and forwarding): the sweep forwards it again."""
SWEEP_COUNT = 200
_READ_BATCH = 500  # records per pipelined read of a GroupResult


class CanvasStore:
    def __init__(self, transport: Transport, settings: Settings) -> None:
        self.transport = transport
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self.done_ttl_s = min(settings.result_ttl, record.DONE_TTL_S)

    # -- creation ---------------------------------------------------------------------
    def chord_commands(self, out: list[bytes], queue: str, body_id: str, n: int, mode: str,
                       body: bytes | str) -> None:
        """The chord state of body ``body_id`` (``body``: its message as written)."""
        state = keys.chord(self.ns, queue, body_id)
        out.append(pack("HSET", state, "n", n, "mode", mode, "m", body, "count", 0))
        out.append(pack("EXPIRE", state, self.ttl_s))

    def pending_commands(self, out: list[bytes], queue: str, task_id: str, task: str,
                         enqueued_ms: int) -> None:
        """The PENDING record of a step that a forward enqueues later."""
        rec = keys.record(self.ns, queue, task_id)
        out.append(pack("HSET", rec, *record.enqueued(task, queue, enqueued_ms, None)))
        out.append(pack("EXPIRE", rec, self.ttl_s))
        if queue_of(task_id) != queue:  # a chosen id: where AsyncResult looks it up
            out.append(pack("SET", keys.task_queue(self.ns, task_id), queue, "EX", self.ttl_s))

    def send(self, commands: list[bytes]) -> None:
        if commands:
            self.transport.run(Packed(commands))

    # -- a chord body -----------------------------------------------------------------
    def chord_results(self, queue: str, body_id: str) -> dict[int, bytes]:
        """Member index -> contribution, as ``chord.lua`` stored them."""
        raw = self.transport.connection.client.hgetall(keys.chord_results(self.ns, queue,
                                                                          body_id))
        return {int(k): cast(bytes, v) for k, v in raw.items()}

    # -- a group's records ------------------------------------------------------------
    def read_records(self, items: Sequence[tuple[str, str]], fields: Sequence[str]
                     ) -> list[list[bytes | None]]:
        """``fields`` of each (queue, task id)'s record, in pipelined batches: one
        round trip per ``_READ_BATCH`` records."""
        out: list[list[bytes | None]] = []
        for start in range(0, len(items), _READ_BATCH):
            pipe = Packed()
            for queue, task_id in items[start:start + _READ_BATCH]:
                pipe.command("HMGET", keys.record(self.ns, queue, task_id), *fields)
            out += self.transport.run(pipe)
        return out

    # -- the outbox sweep -------------------------------------------------------------
    def sweep(self, queue: str, age_ms: int = SWEEP_AGE_MS, count: int = SWEEP_COUNT) -> int:
        """Forward again what stayed in ``queue``'s outbox ``age_ms`` or longer, and
        delete what the server confirmed; returns how many. Forwarding twice changes
        nothing (each forward script is idempotent)."""
        box = [keys.outbox(self.ns, queue), keys.outbox_due(self.ns, queue)]
        got = self.transport.call("outbox", box, ["due", age_ms, count])
        if not got:
            return 0
        pairs = list(zip(got[::2], got[1::2], strict=True))
        pipe = Packed()
        sent: list[tuple[bytes, bytes]] = []
        done: list[Any] = []
        for item, value in pairs:
            try:
                f = Forward.decode(as_str(item), value)
            except Exception as exc:  # never forwardable: dropped, and said why
                log.error("Dropping unreadable outbox item %s on queue %s: %s",
                          as_str(item), queue, exc)
                done += (item, value)
                continue
            pipe.optional.add(len(pipe.commands))
            pipe.script(f.script, f.keys, f.args)
            sent.append((item, value))
        replies = self.transport.run(pipe) if pipe.commands else []
        for (item, value), reply in zip(sent, replies, strict=True):
            if not isinstance(reply, Exception):
                done += (item, value)
        if done:
            self.transport.call("outbox", box, ["done", *done])
        if sent:
            log.warning("Forwarded %d canvas step(s) again from the outbox of queue %s (a "
                        "worker stopped between a step's outcome and its forward).",
                        len(sent), queue)
        return len(done) // 2
