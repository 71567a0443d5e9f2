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
    └── ResultError
        ├── ResultTimeoutError        (also a builtin TimeoutError) get() timed out
        ├── ResultNotFoundError       no record for this id (never enqueued, forgotten or expired)
        └── TaskFailed                the task failed or died; carries the remote error

Control flow (not errors, base ``TaskSignal``): ``Retry`` asks for another attempt,
``Reject`` sends the message straight to dead letters.
"""

from __future__ import annotations

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


class ResultError(StreamQError):
    """Something about a task's result record."""


class ResultTimeoutError(ResultError, TimeoutError):
    """``AsyncResult.get(timeout=...)`` gave up waiting."""


class ResultNotFoundError(ResultError):
    """No record exists for this task id (never enqueued, forgotten, or expired)."""


class TaskFailed(ResultError):  # noqa: N818 - Celery's name, fixed by the API
    """The task failed (or went to dead letters); carries the remote error."""

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
        text = f"task {task_id} {status}: {exc_type}: {exc_message}"
        if traceback:
            text += "\n\nRemote traceback:\n" + traceback.rstrip()
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            TaskFailed,
            (self.task_id, self.exc_type, self.exc_message, self.traceback, self.status),
        )


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
