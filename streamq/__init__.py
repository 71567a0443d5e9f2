"""streamq: a Celery-style distributed task queue for Python on Redis Streams.

    from streamq import StreamQ
    app = StreamQ()              # STREAMQ_URL, else an embedded Valkey server

    @app.task
    def add(x, y):
        return x + y

    add.delay(2, 3).get(timeout=10)   # run `streamq worker mymodule` elsewhere
"""

from .api.app import StreamQ, default_app, task
from .api.canvas import Chain, Chord, Group, Signature, chain, chord, group
from .api.groups import GroupResult
from .api.hooks import Hook, TaskEvent
from .api.result import AsyncResult
from .api.task import Task, TaskContext, current_task
from .base.errors import (
    BrokerConnectionError,
    BrokerError,
    ChainError,
    ChordError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    EnqueueConnectionError,
    EnqueueError,
    GetInsideTaskError,
    MessageTooLargeError,
    NotDurableError,
    Reject,
    ResultError,
    ResultNotFoundError,
    ResultTimeoutError,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    StreamQError,
    TaskFailed,
    TaskNotRegisteredError,
)
from .base.settings import Settings
from .data.record import Status

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "BrokerConnectionError",
    "BrokerError",
    "Chain",
    "ChainError",
    "Chord",
    "ChordError",
    "ConfigurationError",
    "Hook",
    "DecodeError",
    "EncodeError",
    "EnqueueConnectionError",
    "EnqueueError",
    "GetInsideTaskError",
    "Group",
    "GroupResult",
    "MessageTooLargeError",
    "NotDurableError",
    "Reject",
    "ResultError",
    "ResultNotFoundError",
    "ResultTimeoutError",
    "Retry",
    "SerializationError",
    "Signature",
    "Settings",
    "SoftTimeLimitExceeded",
    "StreamQ",
    "Status",
    "StreamQError",
    "Task",
    "TaskContext",
    "TaskEvent",
    "TaskFailed",
    "TaskNotRegisteredError",
    "chain",
    "chord",
    "current_task",
    "default_app",
    "group",
    "task",
]
