"""Decides what happens to a delivery, and runs it: policy, returning outcome values.

``prepare`` decodes and checks a delivery: it returns a ``Call`` ready to run, or
at once the outcome of a message that cannot run (dead letter, ack of a deleted
entry, the failure of a task whose process was killed at its time limit). ``run``
calls the task and returns its outcome (``streamq.data.outcome``). Nothing here
touches the server: the consumer hands outcomes to the ``OutcomeWriter``. A process
that dies before they are written leaves its entries pending, so they are
delivered again: that is the at-least-once window.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..api.task import Task, TaskContext, running_as
from ..base.backoff import compute_backoff
from ..base.errors import DecodeError, EncodeError, Reject, Retry
from ..data import record, serialization
from ..data.message import Message, now_ms, peek_ids
from ..data.outcome import Dead, Delivery, Failed, Gone, Outcome, Retried, Succeeded
from ..data.serialization import ContentTypeNotAcceptedError


class Call(NamedTuple):
    """A delivery that passed every check, ready to run."""

    delivery: Delivery
    message: Message
    task: Task[Any, Any]
    args: Any
    kwargs: Any


class Executor:
    """Policy for one consumer; testable without processes or a server."""

    def __init__(self, registry: Mapping[str, Task[Any, Any]], accept: set[str],
                 serializer: str, consumer: str, result_ttl_s: int) -> None:
        self.registry = registry
        self.accept = accept
        self.serializer = serializer
        self.consumer = consumer
        self.ttl_s = result_ttl_s

    # -- checks ---------------------------------------------------------------------
    def prepare(self, d: Delivery, *, timed_out: float | None = None) -> Call | Outcome:
        """A ``Call`` to run, or the outcome of a delivery that must not run."""
        if d.raw is None:
            return Gone(d)  # deleted while pending (e.g. purged): nothing left to run
        try:
            msg = Message.decode(d.raw)
        except DecodeError as exc:
            tid, name = peek_ids(d.raw)
            return self._dead(d, tid, name or "?", 0, f"undecodable message: {exc}")
        task = self.registry.get(msg.task)
        if task is None:
            names = sorted(self.registry)
            known = ", ".join(names[:10]) + (f" and {len(names) - 10} more"
                                             if len(names) > 10 else "") if names else "none"
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"task {msg.task!r} is not registered in this worker "
                              f"(registered: {known})")
        if timed_out is not None:
            return self._failed(d, msg, task, "TimeLimitExceeded",
                                f"task ran longer than its timeout of {timed_out:g}s and its "
                                f"process was killed", "", retryable=True, started_ms=None)
        max_deliveries = task.options.max_deliveries
        if d.deliveries > max_deliveries:
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"delivered {d.deliveries - 1} times without an acknowledgement "
                              f"(max_deliveries={max_deliveries}); the process running it "
                              f"kept dying")
        try:
            args, kwargs = serialization.loads(msg.body, msg.content_type,
                                               msg.content_encoding, self.accept)
        except ContentTypeNotAcceptedError as exc:
            return self._dead(d, msg.id, msg.task, msg.retries, str(exc))
        except DecodeError as exc:
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"undecodable arguments: {exc}")
        return Call(d, msg, task, args, kwargs)

    # -- running --------------------------------------------------------------------
    def run(self, call: Call) -> Outcome:
        """Call the task (as ``current_task()``) and return its outcome."""
        d, msg, task = call.delivery, call.message, call.task
        started_ms = now_ms()
        t0 = time.perf_counter()
        try:
            with running_as(TaskContext(msg.id, msg.task, msg.queue, msg.retries,
                                        d.deliveries)):
                value = task.fn(*call.args, **call.kwargs)
        except Retry as sig:
            return self._retry_or_fail(d, msg, task, "Retry", str(sig), "", started_ms,
                                       countdown=sig.countdown)
        except Reject as sig:
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"rejected by the task: {sig.reason}")
        except Exception as exc:
            if isinstance(exc, task.options.autoretry_for):
                return self._retry_or_fail(d, msg, task, _type_name(exc), str(exc),
                                           traceback.format_exc(), started_ms)
            return self._failed(d, msg, task, _type_name(exc), str(exc),
                                traceback.format_exc(), retryable=False, started_ms=started_ms)
        runtime = time.perf_counter() - t0
        try:
            ct, ce, payload = serialization.dumps(value, self.serializer, "the result",
                                                  msg.task)
        except EncodeError as exc:
            return self._failed(d, msg, task, "EncodeError", str(exc), "",
                                retryable=False, started_ms=started_ms)
        return Succeeded(d, msg.id, msg.task, payload, ct, ce, started_ms, runtime)

    # -- outcomes -------------------------------------------------------------------
    def _retry_or_fail(self, d: Delivery, msg: Message, task: Task[Any, Any], exc_type: str,
                       exc_message: str, tb: str, started_ms: int,
                       countdown: float | None = None) -> Outcome:
        opts = task.options
        if msg.retries >= opts.max_retries:
            return self._failed(d, msg, task, exc_type, exc_message, tb, retryable=False,
                                started_ms=started_ms, exhausted=True)
        delay = countdown if countdown is not None else compute_backoff(
            msg.retries, opts.retry_backoff, opts.retry_backoff_max)
        delay = max(0.0, delay)
        due = now_ms() + int(delay * 1000)
        error = f"{exc_type}: {exc_message}"
        nxt = msg.with_retry(error, due)
        fields = record.retry(retries=nxt.retries, deliveries=d.deliveries, exc_type=exc_type,
                              exc_message=exc_message, traceback=tb, eta_ms=due,
                              started_ms=started_ms, worker=self.consumer)
        # The record must outlive the wait until the retry runs.
        return Retried(d, msg.id, msg.task, due, nxt.encode(), fields,
                       self.ttl_s + int(delay) + 1, delay, error)

    def _failed(self, d: Delivery, msg: Message, task: Task[Any, Any], exc_type: str,
                exc_message: str, tb: str, *, retryable: bool, started_ms: int | None,
                exhausted: bool = False) -> Outcome:
        if retryable and msg.retries < task.options.max_retries:
            return self._retry_or_fail(d, msg, task, exc_type, exc_message, tb,
                                       started_ms or now_ms())
        reason = f"{exc_type}: {exc_message}"
        if exhausted or task.options.max_retries:
            reason = f"failed after {msg.retries + 1} attempt(s): {reason}"
        fields = record.failure(exc_type=exc_type, exc_message=exc_message, traceback=tb,
                                retries=msg.retries, deliveries=d.deliveries,
                                started_ms=started_ms, finished_ms=now_ms(),
                                worker=self.consumer)
        full = f"{reason}\n{tb}".rstrip() if tb else reason
        return Failed(d, msg.id, msg.task, msg.retries, full, fields, f"{exc_type}: {exc_message}")

    def _dead(self, d: Delivery, task_id: str | None, name: str, retries: int, reason: str
              ) -> Dead:
        fields = record.dead(reason=reason, task=name, deliveries=d.deliveries,
                             dead_at_ms=now_ms(), worker=self.consumer) if task_id else None
        return Dead(d, task_id, name, retries, reason, fields)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"
