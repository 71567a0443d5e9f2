"""Decides what happens to a delivery, and runs it: policy, returning outcome values.

``prepare`` decodes and checks a delivery: it returns a ``Call`` ready to run, or
at once the outcome of a message that cannot run (dead letter, ack of a deleted
entry, the failure of a task whose process was killed at its time limit). ``run``
calls the task and returns its outcome (``streamq.data.outcome``). Nothing here
touches the server: the consumer hands outcomes to the ``OutcomeWriter``. A process
that dies before they are written leaves its entries pending, so they are
delivered again: that is the at-least-once window.

Two decisions exist for what other workers may see differently:

- A message for a task this worker does not know (a rolling deploy: an older worker
  meets a newer task) is handed back through the delayed set ``HANDBACKS`` times,
  ``HANDBACK_DELAY_S`` apart, without counting a retry, so that a worker that knows
  the task can take it; only then is it dead-lettered, with a reason that says so.
- Nothing is written that the server would refuse as one value (its
  ``proto-max-bulk-len``, read once through the task's app; a refused write would be
  retried for ever as an outage): a larger result fails its task with
  ``MessageTooLargeError``, a larger error text is cut. Only a value longer than
  any server could refuse is measured: one ``len()`` on the hot path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ..api.limits import DEFAULT_VALUE_LIMIT, MIN_SERVER_LIMIT
from ..api.task import Task, TaskContext, running_as
from ..base.errors import EncodeError, SoftTimeLimitExceeded
from ..data import record, serialization
from ..data.message import Message, now_ms, peek_ids, short_repr
from ..data.outcome import Dead, Delivery, Gone, Outcome, Retried, Succeeded
from ..data.serialization import ContentTypeNotAcceptedError
from ..data.signing import OVERHEAD, BadSignature, Signer
from .outcomes import Outcomes
from .policy import (
    DEFAULT_MAX_DELIVERIES,
    HANDBACK_DELAY_S,
    HANDBACKS,
    SURE_TO_FIT,
)
from .softlimits import SoftLimits, checkpoint
from .texts import one_line, shape_of, size_over, text_of, type_name

if TYPE_CHECKING:
    from .continuations import Continuations


class Call(NamedTuple):
    """A delivery that passed every check, ready to run."""

    delivery: Delivery
    message: Message
    task: Task[Any, Any]
    args: Any
    kwargs: Any


class Executor(Outcomes):
    """Policy for one consumer; testable without processes or a server."""

    def __init__(self, registry: Mapping[str, Task[Any, Any]], accept: set[str],
                 serializer: str, consumer: str, result_ttl_s: int, *,
                 signer: Signer | None = None, max_message_bytes: int = 0,
                 max_result_bytes: int = 0, secrets: tuple[str, ...] = (),
                 continuations: Continuations | None = None) -> None:
        self.registry = registry
        self.continuations = continuations
        """Canvas steps' forwards (None: a canvas message runs as a plain one)."""
        self.ordering: Callable[[Call], Call | Outcome] | None = None
        """The gate of calls with a partition key (``ordering.py``; None: ungated)."""
        self.accept = accept
        self.serializer = serializer
        self.consumer = consumer
        self.ttl_s = result_ttl_s
        self.most_deliveries = self._most_deliveries()
        self.soft_limits = SoftLimits()
        """Raises ``SoftTimeLimitExceeded`` in tasks past their ``soft_timeout`` (its
        ``fire`` is called by the housekeeping thread)."""
        self.signer = signer
        """Verifies each entry before anything of it is decoded, signs what is written
        back (retries, hand-backs); None: signing is off."""
        self.secrets = secrets
        """Hidden from what a task's error puts in its record, log and dead letter."""
        # A signed entry may be a signature longer than the limit its producer checked.
        self.entry_cap = max_message_bytes + (OVERHEAD if signer else 0) \
            if max_message_bytes else 0
        self.result_cap = max_result_bytes
        self.result_sure = min(SURE_TO_FIT, max_result_bytes // 4) if max_result_bytes \
            else SURE_TO_FIT
        """Results up to this many characters fit every limit: only longer are measured."""

    def _most_deliveries(self) -> int:
        """The highest ``max_deliveries`` a message here may have: that of its task is
        unknown until the message is decoded, so the highest of every registered task
        (and the default, for a message that cannot be decoded)."""
        return max([DEFAULT_MAX_DELIVERIES,
                    *(t.options.max_deliveries for t in self.registry.values())])

    # -- checks ---------------------------------------------------------------------
    def prepare(self, d: Delivery, *, timed_out: float | None = None) -> Call | Outcome:
        """A ``Call`` to run, or the outcome of a delivery that must not run.

        Nothing a message holds makes this raise: whatever fails while decoding it
        makes it a dead letter, with a reason that says in one line what was wrong."""
        raw = d.raw
        if raw is None:
            return Gone(d)  # deleted while pending (e.g. purged): nothing left to run
        if d.deliveries > self.most_deliveries and timed_out is None:
            # Its processes kept dying before acknowledging it, maybe while decoding
            # it: decided before decoding, from the highest limit its task can have.
            # (A task killed at its time limit was decoded: its failure comes first.)
            dead = self._delivered_too_often(d)
            if dead is not None:
                return dead
        if self.entry_cap and len(raw) > self.entry_cap:
            return self._refused(d, f"message of {len(raw)} bytes exceeds max_message_bytes "
                                    f"({self.entry_cap}); not decoded")
        if self.signer is not None:
            try:
                raw = self.signer.verify(raw)
            except BadSignature as exc:
                return self._refused(d, str(exc))
        try:
            msg = Message.decode(raw)
        except Exception as exc:
            tid, name = peek_ids(raw)
            return self._dead(d, tid, name or "?", 0, f"undecodable message: {one_line(exc)}")
        checked = self._checked(d, msg, timed_out)
        if msg.key is not None and self.ordering is not None and isinstance(checked, Call):
            checked = self.ordering(checked)  # parked (Gone) until its key's turn
        if msg.then is not None and self.continuations is not None:
            return self.continuations.prepared(checked) if isinstance(checked, Call) else \
                self.continuations.finished(msg, checked)
        return self.unrecorded(checked) if msg.ignore_result and \
            not isinstance(checked, Call) else checked

    def _checked(self, d: Delivery, msg: Message, timed_out: float | None
                 ) -> Call | Outcome:
        """``prepare``'s checks of a decoded message."""
        task = self.registry.get(msg.task)
        if task is None:
            return self._unknown_task(d, msg)
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
            payload = serialization.loads(msg.body, msg.content_type, msg.content_encoding,
                                          self.accept)
        except ContentTypeNotAcceptedError as exc:
            return self._dead(d, msg.id, msg.task, msg.retries, one_line(exc))
        except Exception as exc:
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"undecodable arguments: {one_line(exc)}")
        try:
            args, kwargs = payload
        except Exception:  # decoded, but not a pair
            return self._bad_arguments(d, msg, payload)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return self._bad_arguments(d, msg, payload)
        return Call(d, msg, task, args, kwargs)

    def _unknown_task(self, d: Delivery, msg: Message) -> Retried | Dead:
        """Hand the message back for a worker that knows its task (a retry that does
        not count), or dead-letter it once it was handed back ``HANDBACKS`` times."""
        names = sorted(self.registry)
        known = ", ".join(names[:10]) + (f" and {len(names) - 10} more"
                                         if len(names) > 10 else "") if names else "none"
        why = (f"task {short_repr(msg.task, 200)} is not registered in this worker "
               f"(registered: {known})")
        if msg.handbacks >= HANDBACKS:
            low, high = HANDBACK_DELAY_S
            return self._dead(d, msg.id, msg.task, msg.retries,
                              f"{why}, and no worker that knows it took it: handed back "
                              f"{msg.handbacks} times, {low:g}-{high:g}s apart, by workers "
                              f"that do not know it")
        delay = random.uniform(*HANDBACK_DELAY_S)
        due = now_ms() + int(delay * 1000)
        text = f"{why}; handed back ({msg.handbacks + 1} of {HANDBACKS}) for a worker " \
               f"that knows it"
        fields = record.retry(retries=msg.retries, deliveries=d.deliveries,
                              exc_type="TaskNotRegisteredError", exc_message=text,
                              traceback="", eta_ms=due, started_ms=now_ms(),
                              worker=self.consumer)
        return Retried(d, msg.id, msg.task, due, self._seal(msg.handed_back(due)), fields,
                       self.ttl_s + int(delay) + 1, delay, f"TaskNotRegisteredError: {text}")

    def _refused(self, d: Delivery, reason: str) -> Dead:
        """The dead letter of an entry refused before decoding. Its task and id come
        from its head; its record is written only without signing, since the id of an
        entry that is not trusted must not change any task's record."""
        tid, name = peek_ids(d.raw or b"", parse=False)
        return self._dead(d, None if self.signer else tid, name or "?", 0, reason)

    def _delivered_too_often(self, d: Delivery) -> Dead | None:
        """The dead letter of an entry delivered more often than any task here allows,
        made without decoding it; None if a task registered since allows as many."""
        self.most_deliveries = most = self._most_deliveries()
        if d.deliveries <= most:
            return None
        tid, name = peek_ids(d.raw or b"", parse=False)  # its head only
        return self._dead(d, tid, name or "?", 0,
                          f"delivered {d.deliveries - 1} times without an acknowledgement "
                          f"(max_deliveries={most}, the highest of this worker's tasks); "
                          f"the process running it kept dying, so it was not decoded again")

    def _bad_arguments(self, d: Delivery, msg: Message, payload: Any) -> Dead:
        return self._dead(d, msg.id, msg.task, msg.retries,
                          f"malformed arguments: they must decode to [list, dict] (the "
                          f"positional and keyword arguments), got {shape_of(payload)}")

    # -- running --------------------------------------------------------------------
    def run(self, call: Call) -> Outcome:
        """Call the task (as ``current_task()``) and return its outcome.

        Nothing the task does, short of killing its process, makes this raise: an
        error whose ``str()`` raises, a result that cannot be encoded (nested too
        deeply, containing itself), a retry that cannot be scheduled, each gives a
        ``FAILURE``."""
        d, msg, task = call.delivery, call.message, call.task
        if task.is_async:  # one routed to a queue of sync tasks: run here, alone
            return asyncio.run(self.run_async(call))
        started_ms = now_ms()
        t0 = time.perf_counter()
        soft = task.options.soft_timeout
        try:
            with running_as(TaskContext(msg.id, msg.task, msg.queue, msg.retries,
                                        d.deliveries)):
                if soft is None:
                    value = task.fn(*call.args, **call.kwargs)
                else:
                    self.soft_limits.arm(soft)
                    try:
                        value = task.fn(*call.args, **call.kwargs)
                    finally:
                        # Inside the try: what arrives while the call winds up is the
                        # task's error too, never the executor's.
                        self.soft_limits.disarm()
                        checkpoint()
        except Exception as exc:
            if isinstance(exc, SoftTimeLimitExceeded) and not exc.args:
                exc = SoftTimeLimitExceeded(f"the task ran past its soft time limit of "
                                            f"{soft:g}s")
            return self._done(call, self._error_outcome(call, exc, started_ms))
        return self._done(call, self._value_outcome(call, value, started_ms,
                                                    time.perf_counter() - t0))

    async def run_async(self, call: Call) -> Outcome:
        """``run`` for an ``async def`` task, on the process's event loop. Its time
        limit (the soft one if set, else the hard one) cancels it: the coroutine sees
        ``CancelledError`` where it waits, and may clean up."""
        d, msg, task = call.delivery, call.message, call.task
        started_ms = now_ms()
        t0 = time.perf_counter()
        soft, hard = task.options.soft_timeout, task.options.timeout
        limit = soft or hard
        try:
            with running_as(TaskContext(msg.id, msg.task, msg.queue, msg.retries,
                                        d.deliveries)):
                if limit is None:
                    value = await task.fn(*call.args, **call.kwargs)
                else:
                    timer = asyncio.timeout(limit)
                    try:
                        async with timer:
                            value = await task.fn(*call.args, **call.kwargs)
                    except TimeoutError:
                        if not timer.expired():
                            raise  # the task's own
                        if soft is None:
                            return self._done(call, self._failed(
                                d, msg, task, "TimeLimitExceeded",
                                f"task ran longer than its timeout of {limit:g}s and was "
                                f"cancelled", "", retryable=True, started_ms=started_ms))
                        raise SoftTimeLimitExceeded(
                            f"the task ran past its soft time limit of {limit:g}s and was "
                            f"cancelled") from None
        except Exception as exc:
            return self._done(call, self._error_outcome(call, exc, started_ms))
        return self._done(call, self._value_outcome(call, value, started_ms,
                                                    time.perf_counter() - t0))

    def _done(self, call: Call, outcome: Outcome) -> Outcome:
        if call.message.then is not None and self.continuations is not None:
            return self.continuations.finished(call.message, outcome)
        return self.unrecorded(outcome) if call.message.ignore_result else outcome

    def _error_outcome(self, call: Call, exc: Exception, started_ms: int) -> Outcome:
        d, msg, task = call.delivery, call.message, call.task
        try:
            return self._raised(d, msg, task, exc, started_ms)
        except Exception as inner:  # its outcome could not be built
            return self._failed(d, msg, task, type(exc).__name__,
                                f"{text_of(exc)} (and its outcome could not be built: "
                                f"{type(inner).__name__}: {text_of(inner)})", "",
                                retryable=False, started_ms=started_ms)

    def _value_outcome(self, call: Call, value: Any, started_ms: int, runtime: float
                       ) -> Outcome:
        d, msg, task = call.delivery, call.message, call.task
        try:
            ct, ce, payload = serialization.dumps(value, self.serializer, "the result",
                                                  msg.task)
        except Exception as exc:
            return self._failed(d, msg, task, "EncodeError" if isinstance(exc, EncodeError)
                                else type_name(exc), text_of(exc), "",
                                retryable=False, started_ms=started_ms)
        if len(payload) > self.result_sure:  # long enough that a limit may refuse it
            cap = self.result_cap
            limit = cap if cap and cap <= MIN_SERVER_LIMIT else \
                min(cap or DEFAULT_VALUE_LIMIT, self._value_limit(task))
            size = size_over(payload, limit)
            if size is not None:
                why = f"max_result_bytes ({cap}); return a reference to the data (a key, " \
                      f"a path) instead, or raise max_result_bytes on the worker" \
                    if limit == cap else \
                    f"the server's limit of {limit} bytes (proto-max-bulk-len)"
                return self._failed(d, msg, task, "MessageTooLargeError",
                                    f"result of {size} bytes exceeds {why}", "",
                                    retryable=False, started_ms=started_ms)
        return Succeeded(d, msg.id, msg.task, payload, ct, ce, started_ms, runtime)
