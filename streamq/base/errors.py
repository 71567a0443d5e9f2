"""Every exception streamq raises on purpose, and the control-flow signals.

Error tree (all derive from ``StreamQError``)::

    StreamQError
    ├── ConfigurationError            bad settings, URL, or CLI input
    ├── SerializationError
    │   ├── EncodeError               arguments or a result the serializer cannot encode
    │   ├── DecodeError               a payload that cannot be decoded (carries raw bytes)
    │   └── MessageTooLargeError      a call's message larger than the server accepts in one
    │                                 value (``proto-max-bulk-len``): refused before sending
    ├── TaskNotRegisteredError        a message names a task this process does not know
    ├── BrokerError
    │   ├── BrokerConnectionError     (also a builtin ConnectionError) server unreachable
    │   └── EnqueueError              map() failed part way: carries what was enqueued
    │       └── EnqueueConnectionError    ... because the server could not be reached
    │                                     (also a BrokerConnectionError)
    ├── EmbeddedServerError           the embedded Valkey server could not be started
    ├── ChainError                    (a record's error) an earlier step of its chain failed
    │   └── ChordError                (a chord body's) a member failed for good: no body ran
    └── ResultError
        ├── ResultTimeoutError        (also a builtin TimeoutError) get() timed out; says
        │                             whether any live worker reads the task's queue
        ├── ResultNotFoundError       no record for this id (never enqueued, forgotten or expired)
        ├── GetInsideTaskError        (also a builtin RuntimeError) get() inside a task, on
        │                             the queue that task runs on
        └── TaskFailed                the task failed or died; carries the remote error, and
                                      is also the task's own exception class when the caller
                                      has it imported (see ``remote_failure``)

Control flow (not errors, base ``TaskSignal``): ``Retry`` asks for another attempt,
``Reject`` sends the message straight to dead letters.
"""

from __future__ import annotations

import builtins
import sys
import types
from collections.abc import Mapping
from typing import Any


class StreamQError(Exception):
    """Root of every error streamq raises on purpose."""


class ConfigurationError(StreamQError):
    """Settings, a URL or command-line input are wrong."""


class SerializationError(StreamQError):
    """Arguments, a result or a message could not be (de)serialized."""


class EncodeError(SerializationError):
    """The serializer could not encode a value."""


class DecodeError(SerializationError):
    """A payload could not be decoded; keeps the raw bytes for dead letters."""

    def __init__(self, message: str, raw: bytes | str | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class TaskNotRegisteredError(StreamQError):
    """A message names a task that is not registered in this process."""


class BrokerError(StreamQError):
    """The Redis server answered with an error streamq did not expect.

    ``code`` is the reply's first word (``NOGROUP``, ``OOM``, ``CROSSSLOT``, ...)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class BrokerConnectionError(BrokerError, ConnectionError):
    """The Redis server cannot be reached (the URL is shown with its password masked)."""


class MessageTooLargeError(SerializationError):
    """A value is larger than the server accepts in one command argument (its
    ``proto-max-bulk-len``, 512 MiB unless lowered): ``size`` and ``limit`` in bytes.

    Raised by ``delay()``, ``apply_async()``, ``map()`` and ``send_by_name()`` for a
    call whose encoded message is too large, before anything is sent; a worker whose
    task returns a result that large stores a FAILURE with this error's name."""

    def __init__(self, message: str, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class NotDurableError(BrokerError):
    """A durable enqueue (``durable=True``) was written, but the server did not confirm
    in time that it is on disk (its AOF) or on enough replicas: the task may still
    run. ``handles`` are the calls concerned."""

    def __init__(self, message: str, code: str = "", *, handles: list[Any] | None = None
                 ) -> None:
        super().__init__(message, code)
        self.handles = list(handles or [])


class EnqueueError(BrokerError):
    """Enqueueing several calls (``map()``) failed part way; the cause is chained.

    The calls' handles, each list in the order of the calls:

    - ``enqueued``: written for sure (their batches were answered without an error);
    - ``unknown``: in a batch whose reply was an error or never came, so each may or
      may not have been written: read ``.status`` (``UNKNOWN``: not enqueued, since a
      record is always written before its message) before sending one again;
    - ``not_sent``: never sent, so not enqueued;
    - ``handles``: all of them, ``handles[i]`` being the i-th call (to find the items
      to send again).

    Sending stops at the first error, so what follows it is ``not_sent``."""

    def __init__(self, message: str, code: str = "", *, handles: list[Any] | None = None,
                 enqueued: list[Any] | None = None, unknown: list[Any] | None = None,
                 not_sent: list[Any] | None = None) -> None:
        super().__init__(message, code)
        self.handles: list[Any] = handles or []
        self.enqueued: list[Any] = enqueued or []
        self.unknown: list[Any] = unknown or []
        self.not_sent: list[Any] = not_sent or []


class EnqueueConnectionError(EnqueueError, BrokerConnectionError):
    """An ``EnqueueError`` whose cause is a lost or refused connection: still a
    ``BrokerConnectionError`` (and ``ConnectionError``), as it was before."""


class EmbeddedServerError(StreamQError):
    """The embedded Valkey server could not be started or found."""


class ChainError(StreamQError):
    """The error a canvas step's record carries when it never ran because the step
    before it failed for good; its message names that step."""


class ChordError(ChainError):
    """The error of a chord body that never ran: a member failed for good (the
    default ``on_error="fail"``); its message names the member."""


class ResultError(StreamQError):
    """Something about a task's result record."""


class ResultTimeoutError(ResultError, TimeoutError):
    """``AsyncResult.get(timeout=...)`` gave up waiting. The message says the task's
    status and whether any live worker reads its queue; ``task_id`` and ``status``
    are attributes, ``readers`` the number of live workers that read the queue lately
    (None when that could not be found out)."""

    def __init__(self, message: str, task_id: str = "", status: str = "",
                 readers: int | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status
        self.readers = readers


class ResultNotFoundError(ResultError):
    """No record exists for this task id (never enqueued, forgotten, or expired)."""


class GetInsideTaskError(ResultError, RuntimeError):
    """``AsyncResult.get()`` was called inside a running task for a task on the queue
    that task itself runs on: it waits for a task that a process of the same worker
    may be holding, which can deadlock it (Celery refuses this too). Enqueue a
    follow-up task instead, or pass ``get(disable_sync_subtasks=False)``."""


class TaskFailed(ResultError):  # noqa: N818 - Celery's name, fixed by the API
    """The task failed (or went to dead letters); carries the remote error.

    ``str()`` is one line, ``<exc_type>: <exc_message>``; the attributes are
    ``task_id``, ``exc_type`` (``ValueError``, ``myapp.errors.PaymentDeclined``),
    ``exc_message``, ``traceback`` (the remote one, as text) and ``status``
    (``FAILURE`` or ``DEAD``). The remote traceback is also a note of the exception
    (``__notes__``), so an uncaught one prints it."""

    def __init__(
        self,
        task_id: str,
        exc_type: str,
        exc_message: str,
        traceback: str = "",
        status: str = "FAILURE",
    ) -> None:
        self.task_id = task_id
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.traceback = traceback
        self.status = status
        super().__init__(self._line())
        if traceback:
            self.add_note(f"Remote traceback of task {task_id} ({status}):\n"
                          f"{traceback.rstrip()}")

    def _line(self) -> str:
        return " ".join(f"{self.exc_type}: {self.exc_message}".split())

    def __str__(self) -> str:
        return self._line()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.task_id!r}, {self._line()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            remote_failure,
            (self.task_id, self.exc_type, self.exc_message, self.traceback, self.status),
        )


def remote_failure(task_id: str, exc_type: str, exc_message: str, traceback: str = "",
                   status: str = "FAILURE") -> TaskFailed:
    """The ``TaskFailed`` that ``get()`` raises for a task that failed with
    ``exc_type``: also an instance of that class, so ``except PaymentDeclined:``
    works as ``except TaskFailed:`` does, when

    - the task FAILED (a dead letter's reason is no exception of the task's);
    - the class is found in a module this process has *already imported*
      (``sys.modules``; builtins by their bare name): a record is written by anyone who
      can write to the server, so its text never makes this process import anything,
      nor run a module's ``__getattr__``;
    - it is an ``Exception`` subclass that a class can derive from together with
      ``TaskFailed`` (no layout conflict, no ``__new__`` that refuses the arguments).

    Otherwise it is a plain ``TaskFailed``. The instance's ``__init__`` is
    ``TaskFailed``'s: attributes the class's own ``__init__`` would set are absent
    (``exc_message`` holds the message)."""
    cls = _dual_class(exc_type) if status == "FAILURE" else None
    if cls is not None:
        try:
            exc = cls(task_id, exc_type, exc_message, traceback, status)
            if isinstance(exc, TaskFailed):
                return exc
        except Exception:  # a __new__ of the class's own that wants other arguments
            _DUAL[exc_type] = None
    return TaskFailed(task_id, exc_type, exc_message, traceback, status)


_DUAL: dict[str, type[TaskFailed] | None] = {}
"""exc_type -> its class derived from TaskFailed too (None: none can be made)."""


def _dual_class(exc_type: str) -> type[TaskFailed] | None:
    if exc_type in _DUAL:
        dual = _DUAL[exc_type]
        # The class found last time may have been replaced (a module reloaded).
        if dual is None or _imported_class(exc_type) is dual.__mro__[1]:
            return dual
    original = _imported_class(exc_type)
    dual = None
    if original is not None and not issubclass(original, TaskFailed) and \
            not issubclass(TaskFailed, original) and not issubclass(original, TaskSignal):
        try:
            dual = types.new_class(original.__name__, (original, TaskFailed), {},
                                   lambda ns: ns.update(_DUAL_BODY, __module__=original.__module__,
                                                        __qualname__=original.__qualname__))
        except Exception:  # layout conflict, a metaclass or __init_subclass__ that refuses
            dual = None
    if original is None:
        return None  # not imported yet: it may be later, so nothing is remembered
    _DUAL[exc_type] = dual
    return dual


_DUAL_BODY: dict[str, Any] = {
    # TaskFailed's behaviour wins over the original class's, which comes first in the
    # MRO so that ``except Original`` and its methods work.
    "__init__": TaskFailed.__init__, "__str__": TaskFailed.__str__,
    "__repr__": TaskFailed.__repr__, "__reduce__": TaskFailed.__reduce__,
    "__doc__": "A TaskFailed that is also the task's own exception class.",
}


def _imported_class(exc_type: str) -> type[Exception] | None:
    """The exception class ``exc_type`` names, looked up in ``sys.modules`` only."""
    parts = exc_type.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    if len(parts) == 1:
        found = vars(builtins).get(exc_type)
    else:
        found = None
        for cut in range(len(parts) - 1, 0, -1):  # the longest imported module first
            module = sys.modules.get(".".join(parts[:cut]))
            if module is None:
                continue
            obj: Any = module
            for name in parts[cut:]:
                # The namespace itself: getattr could run a module's __getattr__.
                namespace = getattr(obj, "__dict__", None)
                obj = namespace.get(name) if isinstance(namespace, Mapping) else None
                if obj is None:
                    break
            found = obj
            break
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


class SoftTimeLimitExceeded(StreamQError):  # noqa: N818 - Celery's name
    """Raised inside a task that ran past its ``soft_timeout``, so that it can clean up
    (Celery's name). Uncaught, it is the task's error like any other (retried by
    ``autoretry_for``). In a task thread it arrives when the task next runs Python
    code: a blocking call in C (a socket read without a timeout) finishes first."""


class TaskSignal(Exception):  # noqa: N818 - control flow, not an error
    """Base of control-flow signals a task raises; these are not errors."""


class Retry(TaskSignal):
    """Raise inside a task to run it again after ``countdown`` seconds.

    With ``countdown=None`` the task's backoff policy picks the delay.
    Retries still count against ``max_retries``.
    """

    def __init__(self, countdown: float | None = None, reason: str = "") -> None:
        self.countdown = countdown
        self.reason = reason
        super().__init__(reason or f"retry requested (countdown={countdown})")


class Reject(TaskSignal):
    """Raise inside a task to send its message to dead letters at once."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
