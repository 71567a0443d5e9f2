"""streamq: a Celery-style distributed task queue for Python on Redis Streams.

    from streamq import StreamQ
    app = StreamQ()              # STREAMQ_URL, else an embedded Valkey server

    @app.task
    def add(x, y):
        return x + y

    add.delay(2, 3).get(timeout=10)   # run `streamq worker mymodule` elsewhere
"""

from .app import StreamQ, default_app, task
from .errors import (
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    Reject,
    ResultError,
    ResultNotFoundError,
    ResultTimeoutError,
    Retry,
    SerializationError,
    StreamQError,
    TaskFailed,
    TaskNotRegisteredError,
    TimeLimitExceededError,
)
from .results import AsyncResult
from .settings import Settings
from .task import Task, TaskContext, current_task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "BrokerConnectionError",
    "BrokerError",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "Reject",
    "ResultError",
    "ResultNotFoundError",
    "ResultTimeoutError",
    "Retry",
    "SerializationError",
    "Settings",
    "StreamQ",
    "StreamQError",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskNotRegisteredError",
    "TimeLimitExceededError",
    "current_task",
    "default_app",
    "task",
]
