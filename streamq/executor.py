"""Runs one delivery: decode, look up, call, then record the outcome.

The outcome is not written at once: it is queued on a ``Batch`` that the consumer
flushes as one pipeline (records, then moves, then one ack script per queue).
A process that dies before a flush leaves its entries pending, so they are
delivered again: that is the at-least-once window.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import keys, results, serialization
from .backoff import compute_backoff
from .broker import Delivery, Packed
from .errors import DecodeError, EncodeError, Reject, Retry
from .message import Message, now_ms, peek_ids
from .serialization import ContentTypeNotAcceptedError
from .task import TaskContext, _current

if TYPE_CHECKING:
    from .app import StreamQ
    from .task import Task

log = logging.getLogger("streamq.task")


class Batch:
    """Outcomes waiting to be written in one round trip (one per task, merged into
    the consumer's shared batch, so a plain slotted class: cheap to build)."""

    __slots__ = ("records", "moves", "acks", "counts", "first_at")

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any] | results.Success, bool]] = []
        self.moves: list[Callable[[Any], None]] = []
        self.acks: dict[str, list[str]] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.first_at = 0.0

    def __len__(self) -> int:
        return len(self.records) + len(self.moves) + sum(len(v) for v in self.acks.values())

    @property
    def outcomes(self) -> int:
        return len(self.records) + len(self.moves)

    def touch(self) -> None:
        if not self.first_at:
            self.first_at = time.monotonic()

    def count(self, queue: str, outcome: str) -> None:
        k = (queue, outcome)
        self.counts[k] = self.counts.get(k, 0) + 1

    def merge(self, newer: Batch) -> None:
        """Append ``newer``'s outcomes after this batch's."""
        if newer.first_at and (not self.first_at or newer.first_at < self.first_at):
            self.first_at = newer.first_at
        self.records += newer.records
        self.moves += newer.moves
        for q, ids in newer.acks.items():
            self.acks.setdefault(q, []).extend(ids)
        for k, n in newer.counts.items():
            self.counts[k] = self.counts.get(k, 0) + n

    def held_ids(self) -> dict[str, list[str]]:
        return {q: list(ids) for q, ids in self.acks.items()}


class Executor:
    """Executes deliveries for one consumer; testable without worker processes."""

    def __init__(self, app: StreamQ, consumer: str, worker_id: str = "",
                 on_start: Callable[[Delivery, float | None], None] | None = None,
                 on_finish: Callable[[Delivery], None] | None = None) -> None:
        self.app = app
        self.consumer = consumer
        self.worker_id = worker_id or consumer
        self.on_start = on_start
        self.on_finish = on_finish
        self.accept = app.accept_content_types
        self.serializer = app.settings.serializer
        self.observers: list[Callable[[str, str, str, float | None], None]] = []
        """Called as ``observer(queue, task, outcome, runtime_s)`` at every state change
        (started, succeeded, failed, retried, dead); their errors are logged, not raised."""
        self.ns = app.settings.namespace
        self.ttl = app.settings.result_ttl

    def _record_outcome(self, batch: Batch, queue: str, task: str, outcome: str,
                        runtime_s: float | None = None) -> None:
        if outcome != "started":
            batch.count(queue, outcome)
        for observer in self.observers:
            try:
                observer(queue, task, outcome, runtime_s)
            except Exception:
                log.exception("Observer %r failed; ignoring.", observer)

    # -- entry point ----------------------------------------------------------------
    def execute(self, d: Delivery, batch: Batch, *, timed_out: float | None = None) -> str:
        """Run ``d`` and queue its outcome on ``batch``; returns the outcome name."""
        batch.touch()
        if d.raw is None:
            # Deleted while pending (e.g. purged): nothing left to run.
            batch.acks.setdefault(d.queue, []).append(d.entry_id)
            return "gone"
        try:
            msg = Message.decode(d.raw)
        except DecodeError as exc:
            tid, name = peek_ids(d.raw)
            return self._dead(d, batch, tid, name or "?", 0,
                              f"undecodable message: {exc}")
        task = self.app.registry.get(msg.task)
        if task is None:
            names = sorted(self.app.registry)
            known = ", ".join(names[:10]) + (f" and {len(names) - 10} more"
                                             if len(names) > 10 else "") if names else "none"
            return self._dead(d, batch, msg.id, msg.task, msg.retries,
                              f"task {msg.task!r} is not registered in this worker "
                              f"(registered: {known})")
        opts = task.options
        if timed_out is not None:
            return self._failed(d, batch, msg, task, "TimeLimitExceeded",
                                f"task ran longer than its timeout of {timed_out:g}s and its "
                                f"process was killed", "", retryable=True, started_ms=None)
        if d.deliveries > opts.max_deliveries:
            return self._dead(d, batch, msg.id, msg.task, msg.retries,
                              f"delivered {d.deliveries - 1} times without an acknowledgement "
                              f"(max_deliveries={opts.max_deliveries}); the process running it "
                              f"kept dying")
        try:
            args, kwargs = serialization.loads(msg.body, msg.content_type,
                                               msg.content_encoding, self.accept)
        except ContentTypeNotAcceptedError as exc:
            return self._dead(d, batch, msg.id, msg.task, msg.retries, str(exc))
        except DecodeError as exc:
            return self._dead(d, batch, msg.id, msg.task, msg.retries,
                              f"undecodable arguments: {exc}")
        return self._run(d, batch, msg, task, args, kwargs)

    # -- running ------------------------------------------------------------------------
    def _run(self, d: Delivery, batch: Batch, msg: Message, task: Task[Any, Any],
             args: Any, kwargs: Any) -> str:
        started_ms = now_ms()
        if self.observers:
            self._record_outcome(batch, d.queue, msg.task, "started")
        if log.isEnabledFor(logging.INFO):
            log.info("Task %s[%s] started (queue %s, attempt %d, delivery %d).", msg.task,
                     msg.id, msg.queue, msg.retries + 1, d.deliveries)
        if self.on_start is not None:
            self.on_start(d, task.options.timeout)
        token = _current.set(TaskContext(msg.id, msg.task, msg.queue, msg.retries,
                                         d.deliveries))
        t0 = time.perf_counter()
        try:
            value = task.fn(*args, **kwargs)
        except Retry as sig:
            return self._retry_or_fail(d, batch, msg, task, sig, started_ms,
                                       countdown=sig.countdown)
        except Reject as sig:
            return self._dead(d, batch, msg.id, msg.task, msg.retries,
                              f"rejected by the task: {sig.reason}")
        except Exception as exc:
            if isinstance(exc, task.options.autoretry_for):
                return self._retry_or_fail(d, batch, msg, task, exc, started_ms)
            return self._failed(d, batch, msg, task, _type_name(exc), str(exc),
                                traceback.format_exc(), retryable=False, started_ms=started_ms)
        finally:
            _current.reset(token)
            # Before any outcome is queued: whoever watches the running task (time
            # limit, STARTED marker) must see it finished first.
            if self.on_finish is not None:
                self.on_finish(d)
        runtime = time.perf_counter() - t0
        try:
            ct, ce, payload = serialization.dumps(value, self.serializer, "the result",
                                                  msg.task)
        except EncodeError as exc:
            return self._failed(d, batch, msg, task, "EncodeError", str(exc), "",
                                retryable=False, started_ms=started_ms)
        batch.records.append((msg.id, results.Success(
            payload, ct, ce, d.deliveries, started_ms, int(runtime * 1000)), True))
        batch.acks.setdefault(d.queue, []).append(d.entry_id)
        self._record_outcome(batch, d.queue, msg.task, "succeeded", runtime)
        if log.isEnabledFor(logging.INFO):
            log.info("Task %s[%s] succeeded in %.4fs (queue %s, attempt %d).", msg.task, msg.id,
                     runtime, msg.queue, msg.retries + 1)
        return "succeeded"

    def _retry_or_fail(self, d: Delivery, batch: Batch, msg: Message, task: Task[Any, Any],
                       exc: BaseException, started_ms: int, countdown: float | None = None
                       ) -> str:
        opts = task.options
        exc_type = "Retry" if isinstance(exc, Retry) else _type_name(exc)
        tb = "" if isinstance(exc, Retry) else traceback.format_exc()
        if msg.retries >= opts.max_retries:
            return self._failed(d, batch, msg, task, exc_type, str(exc), tb, retryable=False,
                                started_ms=started_ms, exhausted=True)
        delay = countdown if countdown is not None else compute_backoff(
            msg.retries, opts.retry_backoff, opts.retry_backoff_max)
        due = now_ms() + int(max(0.0, delay) * 1000)
        error = f"{exc_type}: {exc}"
        nxt = msg.with_retry(error, due)
        encoded = nxt.encode()
        batch.moves.append(lambda pipe: self.app.broker.retry(
            pipe, self.consumer, d, msg.id, due, encoded))
        batch.records.append((msg.id, {
            "status": results.RETRY, "retries": nxt.retries, "deliveries": d.deliveries,
            "exc_type": exc_type, "exc_message": str(exc), "traceback": tb, "eta_ms": due,
            "started_ms": started_ms, "worker": self.consumer,
        }, False))
        self._record_outcome(batch, d.queue, msg.task, "retried")
        log.info("Retrying task %s[%s] in %.2fs, attempt %d of %d: %s", msg.task, msg.id, delay,
                 nxt.retries + 1, opts.max_retries + 1, error)
        return "retried"

    def _failed(self, d: Delivery, batch: Batch, msg: Message, task: Task[Any, Any],
                exc_type: str, exc_message: str, tb: str, *, retryable: bool,
                started_ms: int | None, exhausted: bool = False) -> str:
        if retryable and msg.retries < task.options.max_retries:
            return self._retry_or_fail(d, batch, msg, task, _Named(exc_type, exc_message),
                                       started_ms or now_ms())
        attempts = msg.retries + 1
        reason = f"{exc_type}: {exc_message}"
        if exhausted or task.options.max_retries:
            reason = f"failed after {attempts} attempt(s): {reason}"
        self._move_dead(d, batch, msg.id, msg.task, msg.retries, reason, tb)
        batch.records.append((msg.id, {
            "status": results.FAILURE, "exc_type": exc_type, "exc_message": exc_message,
            "traceback": tb, "retries": msg.retries, "deliveries": d.deliveries,
            "started_ms": started_ms, "finished_ms": now_ms(), "worker": self.consumer,
        }, True))
        self._record_outcome(batch, d.queue, msg.task, "failed")
        log.warning("Task %s[%s] failed (queue %s, attempt %d): %s", msg.task, msg.id, msg.queue,
                    attempts, reason)
        return "failed"

    def _dead(self, d: Delivery, batch: Batch, task_id: str | None, name: str, retries: int,
              reason: str) -> str:
        self._move_dead(d, batch, task_id, name, retries, reason, "")
        if task_id:
            batch.records.append((task_id, {
                "status": results.DEAD, "reason": reason, "task": name,
                "deliveries": d.deliveries, "dead_at_ms": now_ms(), "worker": self.consumer,
            }, True))
        self._record_outcome(batch, d.queue, name, "dead")
        log.warning("Message %s (task %s, id %s) moved to dead letters: %s", d.entry_id, name,
                    task_id, reason)
        return "dead"

    def _move_dead(self, d: Delivery, batch: Batch, task_id: str | None, name: str,
                   retries: int, reason: str, tb: str) -> None:
        full = f"{reason}\n{tb}".rstrip() if tb else reason
        at = now_ms()
        batch.moves.append(lambda pipe: self.app.broker.dead_letter(
            pipe, self.consumer, d, reason=full, task=name, task_id=task_id or "", at_ms=at,
            retries=retries))


class _Named(Exception):
    """An error known only by its type name (e.g. a time limit seen after the kill)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def _type_name(exc: BaseException) -> str:
    if isinstance(exc, _Named):
        return exc.type_name
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"


def flush(app: StreamQ, batch: Batch, consumer: str, worker_key: str | None = None,
          pipe: Any = None) -> None:
    """Write a batch's outcomes in one pipeline: records, moves, then acks.

    With ``pipe`` the commands are only queued on it (the caller executes it)."""
    if not len(batch):
        return
    broker = app.broker
    ns, ttl = app.settings.namespace, app.settings.result_ttl
    own_pipe = pipe is None
    if own_pipe:
        pipe = Packed()
    if batch.records:
        results.write_many(pipe, broker, ns, batch.records, ttl, consumer)
    for move in batch.moves:
        move(pipe)
    for queue, ids in batch.acks.items():
        if ids:
            broker.ack(pipe, queue, ids)
    if batch.counts:
        minute = int(time.time() // 60)
        for (queue, outcome), n in batch.counts.items():
            stats_key = keys.stats(ns, queue, minute)
            pipe.hincrby(stats_key, outcome, n)
            pipe.expire(stats_key, 3600)
            if worker_key:
                pipe.hincrby(worker_key, outcome, n)
    if own_pipe:
        with broker.errors():
            broker.run(pipe)
