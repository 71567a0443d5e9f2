"""Reading, marking and waiting on task records (their shape: ``streamq.data.record``).

A waiter marks the record as waited on (``wait.lua``, which also reads the status)
and blocks with BLMOVE onto itself on the short-lived completion list; when a marked
record turns final, the worker pushes the outcome there (with the result, on
success). So a waiter wakes the moment the task finishes, consumes nothing (any
number of waiters), and usually gets the result with the wake-up; tasks nobody waits
for cost no list. Nothing polls.

A waiter whose record is gone must not block: ``forget`` pushes ``GONE`` onto the
completion list (waking anyone blocked there), and so does ``wait.lua`` for an
unknown id when a BLMOVE follows in the same round trip. ``GONE`` is no completion
(``record.decode_completion`` reads None); the waiter finds no record and says so.
It lives ``GONE_TTL_MS``: only until the blocked reads have taken it.

A record's keys live under its queue's hash tag; the queue comes from the task id
(``ids.queue_of``) or, for an id the caller chose, from ``keys.task_queue``.
"""

from __future__ import annotations

from typing import Any, cast

from ..base import keys
from ..base.ids import queue_of
from ..base.settings import Settings
from ..data import record
from .broker import as_str
from .transport import EXEC, MULTI, Packed, Transport, pack

GONE = b"U"
"""Pushed onto a completion list whose record is gone (see the module docstring)."""
GONE_TTL_MS = 1000


class RecordStore:
    def __init__(self, transport: Transport, settings: Settings) -> None:
        self.transport = transport
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self.done_ttl_s = min(settings.result_ttl, record.DONE_TTL_S)

    def queue_of(self, task_id: str) -> str | None:
        """The queue whose slot holds ``task_id``'s record (None: no such task)."""
        queue = queue_of(task_id)
        if queue is not None:
            return queue
        found = self.transport.connection.client.get(keys.task_queue(self.ns, task_id))
        return as_str(found) if found is not None else None

    def read(self, queue: str, task_id: str) -> dict[str, Any]:
        """The decoded record; empty for an unknown id."""
        raw = self.transport.connection.client.hgetall(keys.record(self.ns, queue, task_id))
        # bytes keys and values: the client does not decode responses.
        return record.decode(cast("dict[bytes, bytes]", raw)) if raw else {}

    def status(self, queue: str, task_id: str) -> str | None:
        value = self.transport.connection.client.hget(keys.record(self.ns, queue, task_id),
                                                      record.STATUS)
        return as_str(value) if value else None

    def forget(self, queue: str, task_id: str) -> None:
        """Delete the record and its completions, waking its waiters with ``GONE``."""
        record_key, done = self._wait_keys(queue, task_id)
        self.transport.run(Packed([
            MULTI, pack("DEL", record_key, done), pack("RPUSH", done, GONE),
            pack("PEXPIRE", done, GONE_TTL_MS), EXEC,
            pack("DEL", keys.task_queue(self.ns, task_id))]))  # another slot

    def mark_started(self, queue: str, task_id: str, worker: str, deliveries: int) -> None:
        """STARTED, for a task that runs long enough for someone to look."""
        key = keys.record(self.ns, queue, task_id)
        pipe = self.transport.connection.client.pipeline(transaction=False)
        pipe.execute_command(  # type: ignore[no-untyped-call]
            "HSET", key, *record.started(worker, deliveries))
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    # -- waiting -------------------------------------------------------------------------
    def mark(self, queue: str, task_id: str) -> str | None:
        """wait.lua: the status (None for an unknown id), marking an unfinished
        record as waited on."""
        status = self.transport.call("wait", self._wait_keys(queue, task_id),
                                     [self.done_ttl_s])
        return as_str(status) if status else None

    def mark_and_wait(self, queue: str, task_id: str, seconds: float
                      ) -> tuple[str | None, bytes | None]:
        """``mark`` and ``wait_done`` in one round trip. For an unknown id the status
        is None and the read answers at once (``GONE``): it does not block."""
        # A NOSCRIPT here would leave the record unmarked while the BLMOVE after it
        # blocks a whole slice: the task's completion would never be pushed to it.
        self.transport.ensure_scripts()
        record_key, done = self._wait_keys(queue, task_id)
        packed = Packed()
        packed.script("wait", [record_key, done], [self.done_ttl_s, GONE, GONE_TTL_MS])
        packed.command("BLMOVE", done, done, "RIGHT", "LEFT", seconds)
        status, payload = self.transport.run(packed)
        return (as_str(status) if status else None), payload

    def wait_done(self, queue: str, task_id: str, seconds: float) -> bytes | None:
        done = keys.done(self.ns, queue, task_id)
        # BLMOVE onto the same list: blocks until the completion is pushed and leaves
        # it there for every other waiter.
        # redis-py types the timeout as int, but BLMOVE takes a float (Redis 6+); the
        # reply is bytes (or None), since the client does not decode responses.
        moved = self.transport.connection.client.blmove(
            done, done, max(seconds, 0.01), "RIGHT", "LEFT")  # type: ignore[arg-type]
        return cast("bytes | None", moved)

    def _wait_keys(self, queue: str, task_id: str) -> list[str]:
        return [keys.record(self.ns, queue, task_id), keys.done(self.ns, queue, task_id)]
