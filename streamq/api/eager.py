"""Eager mode, for users' unit tests: ``StreamQ(eager=True)``, ``STREAMQ_EAGER=1`` or
``with app.eager():`` make every call that would enqueue (``delay``, ``apply_async``,
``map``, ``send_by_name``, the ``a*`` calls, canvas through ``run_inline``) run the
task here and now, in the caller. Nothing connects to a server and no embedded
server starts.

What a worker does to a call is mirrored, not skipped, so that a test catches what
would go wrong for real: the arguments and the result go through the app's
serializer and size limits, ``current_task()`` is set, hooks fire as a worker fires
them, retries (``Retry``, ``autoretry_for``, ``max_retries``) run at once, one after
another (countdowns and backoff are not waited for), and the record a worker would
write is kept in memory, so the handle answers as an ``AsyncResult`` does. The
worker's rules live in ``streamq.worker.outcomes``, a layer above this one: what is
mirrored here follows them.

Not mirrored: time limits, worker processes and their queues, delivery counts,
dead-letter storage, message signing, and anything across processes.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from ..base.backoff import compute_backoff
from ..base.errors import EncodeError, Reject, Retry, TaskNotRegisteredError
from ..base.settings import redact
from ..data import record, serialization
from ..data.message import Message, now_ms
from ..data.record import Status
from .context import TaskContext, running_as
from .hooks import TaskEvent
from .limits import DEFAULT_VALUE_LIMIT, check_size, sure_body
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ
    from .task import Task, TaskApp

__all__ = ["EagerResult", "eager_mode", "is_eager", "lookup", "run_inline"]

WORKER = "eager"
"""The ``worker`` field of an eager record."""
KEPT = 10_000
"""Records kept per app for ``app.AsyncResult(id)``, the newest; older ones read as
expired (a long test session must not grow without bound)."""
MAX_COUNTDOWN_S = 1e9  # as streamq.worker.policy: a Retry may ask for no longer


class EagerResult(AsyncResult):
    """The handle of a call run in eager mode: ``AsyncResult``'s API, answered from the
    record kept in memory. ``get()`` never waits: the call has run."""

    def __init__(self, task_id: str, app: StreamQ, rec: dict[str, Any], *,
                 queue: str | None = None, ignored: bool = False) -> None:
        super().__init__(task_id, app, queue=queue, ignored=ignored)
        self._rec = rec  # shared with the app's store, so forget() reaches every handle

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self.status}>"

    def _where(self) -> str | None:
        return self._queue

    def _record(self) -> dict[str, Any]:
        return dict(self._rec)

    @property
    def status(self) -> str:
        return str(self._rec.get(record.STATUS, Status.UNKNOWN.value))

    state = status

    def forget(self) -> None:
        self._rec.clear()
        _store(self.app).pop(self.id, None)

    def get(self, timeout: float | None = None, propagate: bool = True, *,
            disable_sync_subtasks: bool = True) -> Any:
        """The outcome, at once (``timeout`` is never needed); the same errors as
        ``AsyncResult.get``, ``GetInsideTaskError`` included."""
        if self.ignored:
            return super().get()  # raises its ResultError at once, touching nothing
        if disable_sync_subtasks:
            self._refuse_inside_task()
        found, value = self._final(dict(self._rec), propagate)
        if not found:
            raise self._not_found()
        return value

    async def aget(self, timeout: float | None = None, propagate: bool = True, *,
                   disable_sync_subtasks: bool = True) -> Any:
        return self.get(timeout, propagate, disable_sync_subtasks=disable_sync_subtasks)

    async def astatus(self) -> str:
        return self.status


def is_eager(app: TaskApp) -> bool:
    """Whether ``app``'s calls run inline now (its ``eager`` setting, or ``app.eager()``)."""
    return app.settings.eager


@contextmanager
def eager_mode(app: StreamQ, on: bool = True) -> Iterator[None]:
    """``app.eager()``: eager mode on (or off) inside the block, the previous value back
    after it (so blocks nest). The connections are kept: only the flag changes."""
    before = app.settings.eager
    app.settings = app.settings.with_changes(eager=on)
    try:
        yield
    finally:
        app.settings = app.settings.with_changes(eager=before)


_stores: weakref.WeakKeyDictionary[Any, OrderedDict[str, EagerResult]] = \
    weakref.WeakKeyDictionary()


def _store(app: Any) -> OrderedDict[str, EagerResult]:
    store = _stores.get(app)
    if store is None:
        store = _stores[app] = OrderedDict()
    return store


def lookup(app: StreamQ, task_id: str) -> EagerResult | None:
    """``app.AsyncResult(task_id)`` of an id run eagerly here; for an eager app, a
    record-less handle of any other id (nothing is asked of a server); else None."""
    store = _stores.get(app)
    found = store.get(task_id) if store is not None else None
    if found is not None:
        return EagerResult(task_id, app, found._rec, queue=found._queue)
    return EagerResult(task_id, app, {}) if app.settings.eager else None


# -- running ----------------------------------------------------------------------------
def run_inline(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
               task_id: str | None = None, queue: str | None = None,
               ignore_result: bool | None = None) -> EagerResult:
    """Run one call of ``task`` here and now, as a worker would run it once enqueued
    (the enqueue's checks and ``enqueued`` hook first); returns its handle. A failure
    does not raise here: ``get()`` raises it, as for a real result."""
    app: StreamQ = task.app  # type: ignore[assignment]  # the app behind the protocol
    message, _ = task.prepare(tuple(args), dict(kwargs), queue=queue, task_id=task_id,
                              ignore_result=ignore_result)
    return _one(app, message, None, _checked(app, [(message, None)])[0])


def enqueue(app: StreamQ, prepared: Sequence[tuple[Message, int | None]]
            ) -> list[AsyncResult]:
    """``StreamQ.enqueue`` in eager mode: each call runs at once, in order."""
    tasks = _checked(app, prepared)
    return [_one(app, m, due, task) for (m, due), task in zip(prepared, tasks, strict=True)]


def _one(app: StreamQ, message: Message, due: int | None, task: Task[Any, Any]
         ) -> EagerResult:
    app._emit_enqueued([(message, due)])
    return _kept(app, message, _attempts(app, task, message))


async def aenqueue(app: StreamQ, prepared: Sequence[tuple[Message, int | None]]
                   ) -> list[AsyncResult]:
    """``enqueue`` on the running event loop: an ``async def`` task is awaited here."""
    tasks = _checked(app, prepared)
    handles: list[AsyncResult] = []
    for (message, due), task in zip(prepared, tasks, strict=True):
        app._emit_enqueued([(message, due)])
        rec = await _aattempts(app, task, message)
        handles.append(_kept(app, message, rec))
    return handles


def _checked(app: StreamQ, prepared: Sequence[tuple[Message, int | None]]
             ) -> list[Task[Any, Any]]:
    """The task of each call, after the checks an enqueue makes (sizes; nothing runs
    when one is refused); an unknown task name is refused, as no worker could run it."""
    cap = app.settings.max_message_bytes
    sure = sure_body(cap)
    tasks = []
    for i, (m, _) in enumerate(prepared):
        task = app.registry.get(m.task)
        if task is None:
            raise TaskNotRegisteredError(
                f"task {m.task!r} is not registered in this app, and in eager mode no "
                f"worker can run it: import the module that defines it first")
        if len(m.body) > sure:
            where = f" (call {i + 1} of {len(prepared)})" if len(prepared) > 1 else ""
            check_size(m, m.encode(), cap, lambda: DEFAULT_VALUE_LIMIT, where)
        tasks.append(task)
    return tasks


def _kept(app: StreamQ, message: Message, rec: dict[str, Any]) -> EagerResult:
    if message.ignore_result:  # no record, as a worker keeps none
        return EagerResult(message.id, app, {}, queue=message.queue, ignored=True)
    handle = EagerResult(message.id, app, rec, queue=message.queue)
    store = _store(app)
    store[message.id] = handle
    if len(store) > KEPT:
        store.popitem(last=False)
    return handle


def _attempts(app: StreamQ, task: Task[Any, Any], msg: Message) -> dict[str, Any]:
    """``_aattempts`` from blocking code: an ``async def`` task under ``asyncio.run``
    (in a thread of its own if this thread already runs an event loop)."""
    attempts = _aattempts(app, task, msg)
    if not task.is_async:
        # Nothing in it awaits, so it finishes at its first step, with no event loop.
        try:
            attempts.send(None)
        except StopIteration as done:
            rec: dict[str, Any] = done.value
            return rec
        raise AssertionError("the attempts of a sync task awaited something")
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the common case
        return asyncio.run(attempts)
    # Called from a coroutine (a blocking delay() in an async test): a loop of its own
    # in a thread, with this context (``current_task()`` of an enclosing task).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, attempts).result()


async def _aattempts(app: StreamQ, task: Task[Any, Any], msg: Message) -> dict[str, Any]:
    """Run ``msg`` and its retries (an ``async def`` task awaited); the final record, over
    the retries' fields (a worker's record keeps the last failed attempt's error)."""
    carried: list[Any] = []
    while True:
        args, kwargs = _arguments(app, msg)
        _started(app, msg)
        started_ms, t0 = now_ms(), time.perf_counter()
        try:
            with running_as(TaskContext(msg.id, msg.task, msg.queue, msg.retries, 1)):
                value = task.fn(*args, **kwargs)
                if task.is_async:
                    value = await value
        except Exception as exc:
            step = _raised(app, task, msg, exc, started_ms, time.perf_counter() - t0)
        else:
            step = _returned(app, task, msg, value, started_ms, time.perf_counter() - t0)
        if not isinstance(step, Retrying):
            return _final(msg, carried + step)
        msg, carried = step.message, carried + step.fields


def _arguments(app: StreamQ, msg: Message) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments as a worker decodes them from the message."""
    args, kwargs = serialization.loads(msg.body, msg.content_type, msg.content_encoding,
                                       app.accept_content_types)
    return args, kwargs


def _started(app: StreamQ, msg: Message) -> None:
    if app.hooks.wants("started"):
        app.hooks.emit("started", TaskEvent(msg.id, msg.task, msg.queue, msg.retries + 1, 1))


def _base(msg: Message) -> dict[str, Any]:
    """The record as enqueued (``record.enqueued``), before the attempt's fields."""
    pairs = record.enqueued(msg.task, msg.queue, msg.enqueued_ms, msg.eta_ms)
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


class Retrying(NamedTuple):
    """An attempt that will run again: the next attempt's message, the retry's fields."""

    message: Message
    fields: list[Any]


def _final(msg: Message, pairs: list[Any]) -> dict[str, Any]:
    """The record as a worker leaves it: as enqueued, then each write's ``pairs``."""
    rec = _base(msg)
    rec.update(zip(pairs[::2], pairs[1::2], strict=True))
    rec[record.RETRIES] = msg.retries
    return rec


def _type_name(exc: BaseException) -> str:
    """As the worker names an exception's class (``remote_failure`` finds it by this)."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"


def _text(value: object) -> str:
    """``str(value)``, even when that raises (as ``streamq.worker.texts.text_of``)."""
    try:
        return str(value)
    except Exception as inner:
        return f"<str() of this {type(value).__name__} raised {type(inner).__name__}>"


def _returned(app: StreamQ, task: Task[Any, Any], msg: Message, value: Any,
              started_ms: int, runtime_s: float) -> list[Any]:
    """The fields of a call that returned ``value``: SUCCESS, or the FAILURE a worker
    records for a result it cannot store."""
    try:
        ct, ce, payload = serialization.dumps(value, app.settings.serializer, "the result",
                                              msg.task)
    except Exception as exc:
        name = "EncodeError" if isinstance(exc, EncodeError) else _type_name(exc)
        return _failed(app, msg, name, _text(exc), "", started_ms, runtime_s)
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    cap = app.settings.max_result_bytes
    if cap and len(data) > cap:
        return _failed(app, msg, "MessageTooLargeError",
                       f"result of {len(data)} bytes exceeds max_result_bytes ({cap}); return "
                       f"a reference to the data (a key, a path) instead, or raise "
                       f"max_result_bytes on the worker", "", started_ms, runtime_s)
    if app.hooks.wants("succeeded"):
        app.hooks.emit("succeeded", TaskEvent(msg.id, msg.task, msg.queue, msg.retries + 1,
                                              1, runtime_s))
    fields = [record.STATUS, Status.SUCCESS.value, record.RESULT, data, record.RESULT_CT, ct,
              record.DELIVERIES, 1, record.STARTED_MS, started_ms, record.FINISHED_MS,
              now_ms(), record.RUNTIME_MS, int(runtime_s * 1000), record.WORKER, WORKER]
    if ce != "utf-8":
        fields += [record.RESULT_CE, ce]
    return fields


def _raised(app: StreamQ, task: Task[Any, Any], msg: Message, exc: Exception,
            started_ms: int, runtime_s: float) -> list[Any] | Retrying:
    """What a worker makes of a task that raised ``exc`` (``Outcomes._raised``): a
    retry, or the final fields."""
    secrets = app.settings.secrets
    if isinstance(exc, Retry):
        countdown = exc.countdown
        if countdown is not None and (isinstance(countdown, bool) or not isinstance(
                countdown, int | float) or not countdown <= MAX_COUNTDOWN_S):
            return _failed(app, msg, "Retry",
                           f"Retry(countdown=...) must be a number of seconds up to "
                           f"{MAX_COUNTDOWN_S:.0e} (about 31 years), got {countdown!r}", "",
                           started_ms, runtime_s)
        return _retry_or_fail(app, task, msg, "Retry", redact(_text(exc), secrets), "",
                              started_ms, runtime_s, countdown)
    if isinstance(exc, Reject):
        reason = f"rejected by the task: {_text(exc.reason)}"
        if app.hooks.wants("dead"):
            app.hooks.emit("dead", TaskEvent(msg.id, msg.task, msg.queue, msg.retries + 1, 1,
                                             runtime_s, error=reason))
        return record.dead(reason=reason, task=msg.task, deliveries=1, dead_at_ms=now_ms(),
                           worker=WORKER)
    tb, text = redact(traceback.format_exc(), secrets), redact(_text(exc), secrets)
    if isinstance(exc, task.options.autoretry_for):
        return _retry_or_fail(app, task, msg, _type_name(exc), text, tb, started_ms,
                              runtime_s)
    return _failed(app, msg, _type_name(exc), text, tb, started_ms, runtime_s)


def _retry_or_fail(app: StreamQ, task: Task[Any, Any], msg: Message, exc_type: str,
                   exc_message: str, tb: str, started_ms: int, runtime_s: float,
                   countdown: float | None = None) -> list[Any] | Retrying:
    opts = task.options
    if msg.retries >= opts.max_retries:
        return _failed(app, msg, exc_type, exc_message, tb, started_ms, runtime_s)
    # The delay a worker would wait, for the hook; eager mode runs the retry at once.
    delay = max(0.0, countdown if countdown is not None else compute_backoff(
        msg.retries, opts.retry_backoff, opts.retry_backoff_max))
    error = f"{exc_type}: {exc_message}"
    if app.hooks.wants("retried"):
        app.hooks.emit("retried", TaskEvent(msg.id, msg.task, msg.queue, msg.retries + 1, 1,
                                            runtime_s, error=error, countdown_s=delay))
    fields = record.retry(retries=msg.retries + 1, deliveries=1, exc_type=exc_type,
                          exc_message=exc_message, traceback=tb,
                          eta_ms=now_ms() + int(delay * 1000), started_ms=started_ms,
                          worker=WORKER)
    return Retrying(msg.with_retry(error, None), fields)


def _failed(app: StreamQ, msg: Message, exc_type: str, exc_message: str, tb: str,
            started_ms: int, runtime_s: float) -> list[Any]:
    if app.hooks.wants("failed"):
        app.hooks.emit("failed", TaskEvent(msg.id, msg.task, msg.queue, msg.retries + 1, 1,
                                           runtime_s, error=f"{exc_type}: {exc_message}"))
    return record.failure(exc_type=exc_type, exc_message=exc_message, traceback=tb,
                          retries=msg.retries, deliveries=1, started_ms=started_ms,
                          finished_ms=now_ms(), worker=WORKER)

