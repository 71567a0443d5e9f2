"""``AsyncResult``: a handle on one task's record, its status and its result.

``get()`` waits without polling (see ``streamq.server.records``): a task this process
enqueued is marked and waited for in one round trip; any other takes two.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..base.errors import (
    GetInsideTaskError,
    ResultError,
    ResultNotFoundError,
    ResultTimeoutError,
    TaskFailed,
    remote_failure,
)
from ..base.settings import Settings
from ..data import record, serialization
from ..data.record import Status
from ..server.link import ServerLink
from .context import current_task, process_queues
from .diagnosis import timed_out

if TYPE_CHECKING:
    from ..server.aio import AsyncLinks


class ResultApp(Protocol):
    """What a result handle needs of its app (``StreamQ`` has it): a protocol, so that
    the app imports this module and not the other way round."""

    @property
    def settings(self) -> Settings: ...

    @property
    def server(self) -> ServerLink: ...

    @property
    def accept_content_types(self) -> set[str]: ...

    @property
    def aio(self) -> AsyncLinks: ...


class AsyncResult:
    """A handle on one task's record: its status, and its result once final."""

    def __init__(self, task_id: str, app: ResultApp, *, queue: str | None = None,
                 sent_at: float | None = None, ignored: bool = False) -> None:
        self.id = task_id
        self.app = app
        self._queue = queue
        # When this process enqueued the task (time.monotonic()), if it did: see get().
        self._sent_at = sent_at
        self.ignored = ignored
        """Sent with ``ignore_result=True``: no record is kept, so no result comes
        (``get()`` says so at once; ``status`` reads ``UNKNOWN``)."""
        self.parent: Any = None
        """In a canvas, the handle of the step before this one (``streamq.api.canvas``)."""

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def _store(self) -> Any:
        return self.app.server.records

    def _where(self) -> str | None:
        """The task's queue (whose slot holds its record); None: no such task."""
        if self._queue is None:
            self._queue = self._store.queue_of(self.id)
        return self._queue

    def _record(self) -> dict[str, Any]:
        queue = self._where()
        return self._store.read(queue, self.id) if queue is not None else {}

    @property
    def status(self) -> str:
        queue = self._where()
        status = self._store.status(queue, self.id) if queue is not None else None
        return status or Status.UNKNOWN.value

    state = status

    @property
    def info(self) -> dict[str, Any]:
        """The stored record as a dict (``result`` decoded); empty for an unknown id."""
        rec = self._record()
        if record.RESULT in rec:
            rec[record.RESULT] = self._decode_result(rec)
        return rec

    @property
    def result(self) -> Any:
        """The value once ``SUCCESS``, the ``TaskFailed`` once failed (Celery's
        ``result``), else None; never waits."""
        rec = self._record()
        return self._outcome(rec, False) if rec.get(record.STATUS) in record.FINAL else None

    @property
    def traceback(self) -> str | None:
        """The traceback text of the last failed attempt, if any."""
        return self._record().get(record.TRACEBACK) or None

    def ready(self) -> bool:
        return self.status in record.FINAL

    def successful(self) -> bool:
        return self.status == Status.SUCCESS

    def failed(self) -> bool:
        return self.status in (Status.FAILURE, Status.DEAD)

    def forget(self) -> None:
        """Delete the record; the id then reads as UNKNOWN."""
        queue = self._where()
        if queue is not None:
            self._store.forget(queue, self.id)
        self._sent_at = None  # get() must not assume a record any more

    def get(self, timeout: float | None = None, propagate: bool = True, *,
            disable_sync_subtasks: bool = True) -> Any:
        """Wait for the task to finish and return its value.

        Raises ``TaskFailed`` if it failed or went to dead letters (when
        ``propagate``; otherwise that exception is returned): for a failure, an
        instance of the task's own exception class too when this process has imported
        it (see ``streamq.base.errors.remote_failure``). Raises
        ``ResultTimeoutError`` (a ``TimeoutError``) when ``timeout`` seconds pass,
        saying whether any live worker reads the task's queue, and
        ``ResultNotFoundError`` for an id with no record.

        Inside a running task, waiting for a task on the queue it runs on (or on any
        queue its worker process reads) raises ``GetInsideTaskError`` (a
        ``RuntimeError``): the process may hold that task itself, or be the only one
        to run it, and wait for ever. ``disable_sync_subtasks=False`` (Celery's name)
        allows it.
        """
        if self.ignored:
            raise ResultError(
                f"task {self.id} was sent with ignore_result=True: no record is kept, so "
                f"no result will come; send it without ignore_result to wait for it")
        if disable_sync_subtasks:
            self._refuse_inside_task()
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        # A task this process enqueued has a record, so marking it and blocking can
        # share one round trip: no block on a record that does not exist.
        known = self._sent_at is not None and \
            now - self._sent_at < self.app.settings.result_ttl
        store, queue = self._store, self._where()
        status: str | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            # Wake-ups every few seconds only re-check a record that may have expired
            # meanwhile; completion wakes the read at once.
            block = self._block_s(remaining)
            payload: bytes | None = None
            if queue is None:
                status = None
            elif known:
                status, payload = store.mark_and_wait(queue, self.id, block)
            else:
                status = store.mark(queue, self.id)
                payload = None if status is None else store.wait_done(queue, self.id, block)
                known = True
            if status is None:  # no record when marked: nothing will complete
                raise self._not_found()
            if payload is not None:
                found, value = self._completed(payload)
                if found:
                    return value
                found, value = self._final(self._record(), propagate)
                if found:
                    return value
                # A completion from an earlier run of a requeued task: it answers at
                # once, so pace the loop instead of spinning on it.
                time.sleep(min(0.1, remaining or 0.1))
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timed_out(status, timeout)

    # -- asyncio: the same reads awaited (``a`` + the name; see ``streamq.api.aio``) --
    async def astatus(self) -> str:
        """``status`` on the running event loop."""
        link = self.app.aio.current()
        queue = await self._awhere()
        status = await link.status(queue, self.id) if queue is not None else None
        return status or Status.UNKNOWN.value

    async def aget(self, timeout: float | None = None, propagate: bool = True, *,
                   disable_sync_subtasks: bool = True) -> Any:
        """``get`` on the running event loop: the same waits (a mark, then a blocking
        read on a pooled connection of its own) and the same errors. Only a timeout's
        diagnosis (which workers read the queue) is read with the blocking client."""
        if self.ignored:
            self.get()  # raises the ResultError at once, with get()'s words
        link = self.app.aio.current()
        queue = await self._awhere()
        if disable_sync_subtasks and queue is not None:
            self._refuse_inside_task()  # the queue is known now: no blocking lookup
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        known = self._sent_at is not None and \
            now - self._sent_at < self.app.settings.result_ttl
        status: str | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            block = self._block_s(remaining)
            payload: bytes | None = None
            if queue is None:
                status = None
            elif known:
                status, payload = await link.mark_and_wait(queue, self.id, block)
            else:
                status = await link.mark(queue, self.id)
                payload = None if status is None else \
                    await link.wait_done(queue, self.id, block)
                known = True
            if status is None or queue is None:
                raise self._not_found()
            if payload is not None:
                found, value = self._completed(payload)
                if found:
                    return value
                found, value = self._final(await link.read(queue, self.id), propagate)
                if found:
                    return value
                await asyncio.sleep(min(0.1, remaining or 0.1))  # see get()
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timed_out(status, timeout)

    def _block_s(self, remaining: float | None) -> float:
        """One blocking read's length: until the deadline, at most ``_max_block_s``."""
        return self._max_block_s if remaining is None else \
            max(0.01, min(remaining, self._max_block_s))

    def _completed(self, payload: bytes) -> tuple[bool, Any]:
        """(True, the value) when a completion carries the result itself."""
        done = record.decode_completion(payload)
        if done is None:
            return False, None
        return True, serialization.loads(done[2], done[0], done[1],
                                         accept=self.app.accept_content_types)

    def _final(self, rec: dict[str, Any], propagate: bool) -> tuple[bool, Any]:
        """(True, the outcome) of a final record; (False, None) of an unfinished one
        (a completion from an earlier run of a requeued task)."""
        if rec.get(record.STATUS) in record.FINAL:
            return True, self._outcome(rec, propagate)
        if not rec:  # forgotten (or expired) while we waited
            raise self._not_found()
        return False, None

    async def _awhere(self) -> str | None:
        if self._queue is None:
            self._queue = await self.app.aio.current().queue_of(self.id)
        return self._queue

    def _refuse_inside_task(self) -> None:
        ctx = current_task()
        if ctx is None:
            return
        queue = self._where()
        if queue == ctx.queue or queue in process_queues():
            which = "it runs on" if queue == ctx.queue else "its process reads"
            raise GetInsideTaskError(
                f"never call result.get() inside a task for a task on the queue {which}: "
                f"task {ctx.name} ({ctx.id}) waits for {self.id} on queue {queue!r}, "
                f"which this process may be holding or be the only one to run, so it can "
                f"wait for ever. Enqueue a follow-up task instead (or pass "
                f"get(disable_sync_subtasks=False))")

    def _timed_out(self, status: str | None, timeout: float | None) -> ResultTimeoutError:
        """The timeout error, saying what the record and the worker registry tell."""
        rec: dict[str, Any] = {}
        try:
            rec = self._record()
        except Exception:  # the diagnosis must never hide the timeout itself
            pass
        return timed_out(self.app.server, self.id, self._queue or "?",
                         rec.get(record.STATUS) or status or Status.UNKNOWN.value,
                         rec.get(record.TASK), timeout or 0.0)

    def _not_found(self) -> ResultNotFoundError:
        return ResultNotFoundError(
            f"no record for task {self.id}: it was never enqueued here, was "
            f"forgotten, or its record expired (result_ttl)")

    @property
    def _max_block_s(self) -> float:
        """The longest single blocking read: well inside the client's socket timeout,
        which would otherwise cut it off."""
        return max(0.1, min(5.0, self.app.settings.socket_timeout_s / 2))

    def _decode_result(self, rec: dict[str, Any]) -> Any:
        return serialization.loads(
            rec[record.RESULT], rec.get(record.RESULT_CT, serialization.JSON_CONTENT_TYPE),
            rec.get(record.RESULT_CE, "utf-8"), accept=self.app.accept_content_types)

    def _outcome(self, rec: dict[str, Any], propagate: bool) -> Any:
        status = rec[record.STATUS]
        if status == Status.SUCCESS:
            return self._decode_result(rec) if record.RESULT in rec else None
        if status == Status.DEAD:  # a dead letter's reason, not an earlier attempt's error
            exc = TaskFailed(self.id, "DeadLetter",
                             rec.get(record.REASON) or rec.get(record.EXC_MESSAGE, ""),
                             rec.get(record.TRACEBACK, ""), status=status)
        else:
            exc = remote_failure(self.id, rec.get(record.EXC_TYPE) or "Error",
                                 rec.get(record.EXC_MESSAGE, ""), rec.get(record.TRACEBACK, ""),
                                 status=status)
        if propagate:
            raise exc
        return exc
