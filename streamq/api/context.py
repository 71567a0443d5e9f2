"""``current_task()``: what a running task knows of itself, in a context variable.

Its own module so that ``AsyncResult.get`` can ask it (a ``get()`` inside a task on
its own queue is refused) without importing ``task``, which imports ``result``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import NamedTuple


class TaskContext(NamedTuple):
    """What ``current_task()`` returns inside a running task (built once per run)."""

    id: str
    name: str
    queue: str
    retries: int
    deliveries: int


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "streamq_current_task", default=None)


def current_task() -> TaskContext | None:
    """The running task's id, name, queue, retries and delivery count (None outside one)."""
    return _current.get()


class running_as:  # noqa: N801 - a context manager used like a function
    """Makes ``ctx`` the ``current_task()`` of the code inside (in this thread or
    coroutine: a context variable)."""

    __slots__ = ("ctx", "token")

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> TaskContext:
        self.token = _current.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self.token)


_process_queues: frozenset[str] = frozenset()


def set_process_queues(queues: Iterable[str]) -> None:
    """Record the queues this worker process reads (the worker does, at its start):
    inside a task, ``get()`` of a task on one of them is refused, as on the task's
    own queue."""
    global _process_queues
    _process_queues = frozenset(queues)


def process_queues() -> frozenset[str]:
    """The queues this worker process reads; empty outside a worker process."""
    return _process_queues
