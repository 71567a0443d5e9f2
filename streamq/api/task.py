"""``Task``: a decorated function that runs locally when called and enqueues with
``delay``/``apply_async``/``map``. Task arguments and enqueue options never share
a namespace: ``delay`` takes only the task's arguments.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from ..base.errors import ConfigurationError
from ..base.ids import new_task_id
from ..base.partitions import index_of_key
from ..base.settings import Settings, check_queue_name
from ..data import serialization
from ..data.message import Message, now_ms
from .canvas import Signature
from .context import TaskContext, current_task, running_as
from .result import AsyncResult


class TaskApp(Protocol):
    """What a task needs of its app (``StreamQ`` has it): a protocol, so that the app
    imports this module and not the other way round."""

    @property
    def settings(self) -> Settings: ...

    partitions: dict[str, tuple[str, ...]]

    def enqueue(self, prepared: Sequence[tuple[Message, int | None]], *, many: bool = False,
                durable: bool | None = None) -> list[AsyncResult]: ...

    def value_limit(self) -> int: ...

    async def aenqueue(self, prepared: Sequence[tuple[Message, int | None]], *,
                       many: bool = False, durable: bool | None = None
                       ) -> list[AsyncResult]: ...

    def asubmit(self, message: Message, due: int | None, durable: bool | None = None
                ) -> Coroutine[Any, Any, AsyncResult]: ...

__all__ = ["CountdownDue", "Task", "TaskApp", "TaskContext", "TaskOptions", "build_message",
           "current_task", "due_ms_from", "running_as"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task policy; durations in seconds."""

    name: str
    queue: str
    max_retries: int = 0
    retry_backoff: float = 1.0
    """Base of the exponential backoff, in seconds (full jitter)."""
    retry_backoff_max: float = 600.0
    autoretry_for: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    """Hard limit in seconds: the process running the task is killed and replaced (the
    other tasks it runs in threads go back to the queue uncharged)."""
    soft_timeout: float | None = None
    """Seconds after which ``SoftTimeLimitExceeded`` is raised inside the task."""
    ignore_result: bool = False
    """Keep no record of its calls: no status, no result; the server does a fraction
    of the work per task. Retries, dead letters and metrics still work."""
    max_deliveries: int = 5
    """Deliveries without an acknowledgement before the message goes to dead letters."""

    def __post_init__(self) -> None:
        check_queue_name(self.queue)
        for label, value, low in (("max_retries", self.max_retries, 0),
                                  ("max_deliveries", self.max_deliveries, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        for label, limit in (("timeout", self.timeout), ("soft_timeout", self.soft_timeout)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{label} must be positive seconds, got {limit!r}")
        if self.timeout and self.soft_timeout and self.soft_timeout >= self.timeout:
            raise ValueError(f"soft_timeout ({self.soft_timeout:g}s) must be shorter than "
                             f"timeout ({self.timeout:g}s): the soft limit lets the task "
                             f"clean up before the hard one kills its process")
        if self.retry_backoff < 0 or self.retry_backoff_max < 0:
            raise ValueError("retry_backoff and retry_backoff_max must be >= 0 seconds")


class CountdownDue(int):
    """A due time (ms, by this process's clock) that came from a countdown: it also
    carries the countdown, so the server can add it to its own clock instead."""

    countdown_ms: int

    def __new__(cls, due_ms: int, countdown_ms: int) -> CountdownDue:
        due = super().__new__(cls, due_ms)
        due.countdown_ms = countdown_ms
        return due


def due_ms_from(countdown: float | None, eta: datetime | None) -> int | None:
    """Absolute due time in ms, or None to run now. ``eta`` must be timezone-aware."""
    if countdown is not None and eta is not None:
        raise ValueError("pass countdown or eta, not both")
    if eta is not None:
        if not isinstance(eta, datetime):
            raise TypeError(f"eta must be a datetime, got {type(eta).__name__}")
        if eta.tzinfo is None or eta.tzinfo.utcoffset(eta) is None:
            raise ValueError(
                "eta must be timezone-aware (e.g. datetime.now(timezone.utc) + timedelta(...)); "
                "a naive datetime is ambiguous"
            )
        return int(eta.timestamp() * 1000)
    if countdown is not None:
        if not isinstance(countdown, int | float):
            raise TypeError(f"countdown must be seconds as a number, got {countdown!r}")
        if countdown < 0:
            raise ValueError(f"countdown must be >= 0 seconds, got {countdown!r}")
        if countdown > 0:
            wait_ms = int(countdown * 1000)
            return CountdownDue(now_ms() + wait_ms, wait_ms)
    return None


def build_message(serializer: str, name: str, queue: str, args: Iterable[Any],
                  kwargs: dict[str, Any], due_ms: int | None, task_id: str | None = None
                  ) -> Message:
    """Serialize one call of task ``name`` into a message (no Redis involved)."""
    ct, ce, body = serialization.dumps([list(args), kwargs], serializer, "the arguments",
                                       name)
    return Message(task_id or new_task_id(queue), name, queue, ct, ce, body, 0, now_ms(), due_ms)


_turn = itertools.count()


def route(partitions: dict[str, tuple[str, ...]], queue: str, key: str | None,
          due: int | None, ignore_result: bool) -> str:
    """The queue a call goes to: for a partitioned queue, the partition of ``key`` (a
    stable hash), else the next partition in turn."""
    names = partitions.get(queue)
    if key is not None:
        if names is None:
            raise ConfigurationError(
                f"partition_key given, but queue {queue!r} is not partitioned: declare it "
                f"with app.queue({queue!r}, partitions=N)")
        if not isinstance(key, str) or not key:
            raise ValueError(f"partition_key must be a non-empty string, got {key!r}")
        if due is not None or ignore_result:
            raise ConfigurationError(
                "a call with a partition_key cannot have a countdown, an eta or "
                "ignore_result (its order is kept through its record); send it now")
        return names[index_of_key(key, len(names))]
    return queue if names is None else names[next(_turn) % len(names)]


def _positional_arity(signature: inspect.Signature) -> tuple[int, float] | None:
    """(required, most) positional arguments when a call with positional arguments
    only can be checked by counting them; None when a keyword-only parameter has no
    default (such a call is always wrong, and ``bind`` says why)."""
    required, most = 0, 0.0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            most += 1
            required += p.default is p.empty
        elif p.kind is p.VAR_POSITIONAL:
            most = math.inf
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return None
    return required, most


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function here and now."""

    def __init__(self, app: TaskApp, fn: Callable[P, R], options: TaskOptions) -> None:
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigurationError(
                f"task {options.name}: a generator cannot be a task (a worker would only "
                f"get the generator back); return a list, or enqueue one task per item")
        self.is_async = inspect.iscoroutinefunction(fn)
        """An ``async def`` task: workers run it on their event loop, many at once."""
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._signature = inspect.signature(fn)
        self._arity = _positional_arity(self._signature)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature (``streamq.api.canvas``): in a chain, the previous step's result
        comes first, before ``args``."""
        return Signature(self, args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: a chain passes it no previous result."""
        return Signature(self, args, kwargs, immutable=True)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Enqueue a call with these arguments; returns its ``AsyncResult``. A call
        whose message is larger than the server accepts raises
        ``MessageTooLargeError``, and nothing is sent."""
        return self.app.enqueue([self.prepare(args, kwargs)])[0]

    def apply_async(
        self,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        durable: bool | None = None,
        ignore_result: bool | None = None,
        partition_key: str | None = None,
    ) -> AsyncResult:
        """Enqueue with options: ``countdown`` seconds or a timezone-aware ``eta``,
        another ``queue``, or a chosen ``task_id``. ``partition_key`` (a partitioned
        queue's calls, ``StreamQ.queue``): calls with one key run one at a time, in
        enqueue order. ``durable=True`` returns only once
        the server has the write on disk (None: the app's ``durable`` setting); see
        ``StreamQ.enqueue`` and ``NotDurableError``. ``ignore_result=True`` keeps no
        record of the call (None: the task's option)."""
        message, due = self.prepare(tuple(args), dict(kwargs or {}), countdown=countdown,
                                    eta=eta, queue=queue, task_id=task_id,
                                    ignore_result=ignore_result, partition_key=partition_key)
        return self.app.enqueue([(message, due)], durable=durable)[0]

    def map(self, iterable: Iterable[Any]) -> list[AsyncResult]:
        """Enqueue one call per item, in pipelined batches. A tuple item is the
        positional arguments; any other item is the single argument.

        Nothing is sent when a call is refused (wrong arguments, a message larger than
        the server accepts: ``MessageTooLargeError``). When the server fails part
        way, ``EnqueueError`` says which calls were enqueued, which may have been and
        which were not sent: send again only what was not enqueued."""
        prepared = [
            self.prepare(item if isinstance(item, tuple) else (item,), {})
            for item in iterable
        ]
        return self.app.enqueue(prepared, many=True)

    # -- asyncio: the same calls awaited (``a`` + the name; see ``streamq.api.aio``) --
    def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, AsyncResult]:
        """``delay`` on the running event loop: concurrent calls share round trips.
        Await it (or gather it, or give it to ``create_task``): the call is usually
        queued for the loop's next write as soon as it is made."""
        message, due = self.prepare(args, kwargs)
        return self.app.asubmit(message, due)

    def aapply_async(
        self,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        durable: bool | None = None,
        ignore_result: bool | None = None,
    ) -> Coroutine[Any, Any, AsyncResult]:
        """``apply_async`` on the running event loop (awaited as ``adelay``).
        ``durable=True`` (or the app's ``durable`` setting, unless ``durable=False``) is
        refused with a ``ConfigurationError`` before anything is sent."""
        message, due = self.prepare(tuple(args), dict(kwargs or {}), countdown=countdown,
                                    eta=eta, queue=queue, task_id=task_id,
                                    ignore_result=ignore_result)
        return self.app.asubmit(message, due, durable)

    async def amap(self, iterable: Iterable[Any]) -> list[AsyncResult]:
        """``map`` on the running event loop (the same items, checks and errors)."""
        prepared = [
            self.prepare(item if isinstance(item, tuple) else (item,), {})
            for item in iterable
        ]
        return await self.app.aenqueue(prepared, many=True)

    def _call_error(self, kwargs: dict[str, Any], exc: TypeError) -> str:
        """What is wrong with a call, as Python says it: an unexpected keyword first
        (``bind`` would complain of a missing argument before it)."""
        params = self._signature.parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            for name in kwargs:
                p = params.get(name)
                if p is None or p.kind is p.VAR_POSITIONAL:
                    return f"got an unexpected keyword argument {name!r}"
        return str(exc)

    def prepare(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        ignore_result: bool | None = None,
        partition_key: str | None = None,
    ) -> tuple[Message, int | None]:
        """Check and serialize a call; nothing reaches Redis here."""
        arity = self._arity
        # Counting positional arguments is enough when that is all there is; binding
        # the signature costs more than the rest of an enqueue together.
        if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.name}() {self._call_error(kwargs, exc)}") from None
        if task_id is not None and (not isinstance(task_id, str) or not task_id or any(
                c in task_id for c in "{} \n\r\t")):
            raise ValueError(f"task_id must be a non-empty string without spaces or braces, "
                             f"got {task_id!r}")
        due = None if countdown is None and eta is None else due_ms_from(countdown, eta)
        target = check_queue_name(queue) if queue else self.options.queue
        if self.app.partitions or partition_key is not None:
            target = route(self.app.partitions, target, partition_key, due,
                           self.options.ignore_result if ignore_result is None
                           else ignore_result)
        message = build_message(self.app.settings.serializer, self.name, target, args,
                                kwargs, due, task_id)
        if self.options.ignore_result if ignore_result is None else ignore_result:
            message = message._replace(ignore_result=True)
        if partition_key is not None:
            message = message._replace(key=partition_key)
        return message, due
