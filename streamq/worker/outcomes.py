"""Outcomes as values: what a delivery's attempt leads to (a retry, a failure, a dead
letter), built with the record fields the writer stores. ``Executor`` (``executor.py``)
decides which; this builds them, and cuts texts to what the server accepts.
"""


from __future__ import annotations

from typing import Any

from ..api.limits import DEFAULT_VALUE_LIMIT
from ..api.task import Task
from ..base.backoff import compute_backoff
from ..base.errors import Reject, Retry
from ..base.settings import redact
from ..data import record
from ..data.message import Message, now_ms, short_repr
from ..data.outcome import Dead, Delivery, Failed, Outcome, Retried, Succeeded
from ..data.signing import Signer
from .policy import (
    MAX_COUNTDOWN_S,
    SURE_TEXT,
    SURE_TO_FIT,
)
from .texts import format_traceback, size_over, text_of, type_name


class Outcomes:
    """The outcome builders of one consumer's executor (its ``ttl_s``, ``consumer``
    and ``secrets``)."""

    ttl_s: int
    consumer: str
    secrets: tuple[str, ...]
    signer: Signer | None

    def _seal(self, msg: Message) -> bytes | str:
        """A message as written back to the server: signed when signing is on."""
        return msg.encode() if self.signer is None else self.signer.sign(msg.encode())

    @staticmethod
    def unrecorded(outcome: Outcome) -> Outcome:
        """The outcome of a call that keeps no record (``ignore_result``): the same,
        without the record's fields (its dead letter and retry still happen)."""
        if isinstance(outcome, Succeeded):
            return outcome._replace(stored=False)
        if isinstance(outcome, Retried | Failed):
            return outcome._replace(record=[])
        if isinstance(outcome, Dead):
            return outcome._replace(record=None)
        return outcome

    def _value_limit(self, task: Task[Any, Any]) -> int:
        """The largest value the server accepts (``StreamQ.value_limit``); its default
        when the server cannot be asked now (asked again the next time)."""
        try:
            return task.app.value_limit()
        except Exception:
            return DEFAULT_VALUE_LIMIT

    def _fit(self, task: Task[Any, Any], *texts: str) -> list[str]:
        """Error texts cut to a sixteenth of what the server accepts as one value (each
        is stored in the record, the dead letter's reason and a retry's message)."""
        limit = self._value_limit(task)
        cap = limit // 16
        return [text if len(text) <= cap else
                f"{text[:cap]}... [{len(text) - cap} more characters cut: the server "
                f"accepts at most {limit} bytes in one value]" for text in texts]

    def _raised(self, d: Delivery, msg: Message, task: Task[Any, Any], exc: Exception,
                started_ms: int) -> Outcome:
        """The outcome of a task that raised ``exc``."""
        if isinstance(exc, Retry):
            countdown = exc.countdown
            if countdown is not None and (isinstance(countdown, bool) or not isinstance(
                    countdown, int | float) or not countdown <= MAX_COUNTDOWN_S):
                # Not a number, NaN, infinite, or beyond what a record's TTL can hold.
                return self._failed(d, msg, task, "Retry",
                                    f"Retry(countdown=...) must be a number of seconds up "
                                    f"to {MAX_COUNTDOWN_S:.0e} (about 31 years), got "
                                    f"{short_repr(countdown)}", "",
                                    retryable=False, started_ms=started_ms)
            return self._retry_or_fail(d, msg, task, "Retry", redact(text_of(exc), self.secrets),
                                       "", started_ms, countdown=countdown)
        if isinstance(exc, Reject):
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"rejected by the task: {text_of(exc.reason)}")
        # The task's own text may quote the app's URL or key: never store or log those.
        tb, text = (redact(t, self.secrets) for t in (format_traceback(), text_of(exc)))
        if isinstance(exc, task.options.autoretry_for):
            return self._retry_or_fail(d, msg, task, type_name(exc), text, tb, started_ms)
        return self._failed(d, msg, task, type_name(exc), text, tb,
                            retryable=False, started_ms=started_ms)

    # -- outcomes -------------------------------------------------------------------
    def _retry_or_fail(self, d: Delivery, msg: Message, task: Task[Any, Any], exc_type: str,
                       exc_message: str, tb: str, started_ms: int,
                       countdown: float | None = None) -> Outcome:
        opts = task.options
        if len(exc_message) > SURE_TEXT or len(tb) > SURE_TEXT:
            exc_message, tb = self._fit(task, exc_message, tb)
        if msg.retries >= opts.max_retries:
            return self._failed(d, msg, task, exc_type, exc_message, tb, retryable=False,
                                started_ms=started_ms, exhausted=True)
        delay = countdown if countdown is not None else compute_backoff(
            msg.retries, opts.retry_backoff, opts.retry_backoff_max)
        delay = max(0.0, delay)
        due = now_ms() + int(delay * 1000)
        error = f"{exc_type}: {exc_message}"
        encoded = self._seal(msg.with_retry(error, due))
        if len(encoded) > SURE_TO_FIT:
            limit = self._value_limit(task)
            size = size_over(encoded, limit)
            if size is not None:
                return self._failed(d, msg, task, "MessageTooLargeError",
                                    f"the message of its retry ({size} bytes, with the error "
                                    f"{short_repr(error)}) exceeds the server's limit of "
                                    f"{limit} bytes (proto-max-bulk-len)", "",
                                    retryable=False, started_ms=started_ms)
        fields = record.retry(retries=msg.retries + 1, deliveries=d.deliveries, exc_type=exc_type,
                              exc_message=exc_message, traceback=tb, eta_ms=due,
                              started_ms=started_ms, worker=self.consumer)
        # The record must outlive the wait until the retry runs.
        return Retried(d, msg.id, msg.task, due, encoded, fields,
                       self.ttl_s + int(delay) + 1, delay, error)

    def _failed(self, d: Delivery, msg: Message, task: Task[Any, Any], exc_type: str,
                exc_message: str, tb: str, *, retryable: bool, started_ms: int | None,
                exhausted: bool = False) -> Outcome:
        if retryable and msg.retries < task.options.max_retries:
            return self._retry_or_fail(d, msg, task, exc_type, exc_message, tb,
                                       started_ms or now_ms())
        if len(exc_message) > SURE_TEXT or len(tb) > SURE_TEXT:
            exc_message, tb = self._fit(task, exc_message, tb)
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
