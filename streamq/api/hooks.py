"""Hooks: code that runs at each step of a task's life, for logging, metrics, tracing.

Subclass ``Hook``, override the methods you need (each is a no-op by default) and
register it with ``app.add_hook(MyHook())``. Hooks run synchronously, in the process
where the step happens (``enqueued`` in the producer, the others in the worker
process running the task), in the order they were added. An exception in a hook is
logged and never reaches the task or the worker.

==========================  ================================  ===========================
streamq hook                Celery signal                     Dramatiq middleware
==========================  ================================  ===========================
``enqueued``                ``after_task_publish``            ``after_enqueue``
``started``                 ``task_prerun``                   ``before_process_message``
``succeeded``               ``task_success``/``task_postrun`` ``after_process_message``
``retried``                 ``task_retry``                    ``after_process_message``
                                                              (with an exception)
``failed``                  ``task_failure``                  ``after_process_message``
                                                              (with an exception)
``dead``                    ``task_rejected``/``task_unknown``  ``after_skip_message``
==========================  ================================  ===========================
"""

from __future__ import annotations

import logging
from typing import NamedTuple

log = logging.getLogger(__name__)

EVENTS = ("enqueued", "started", "succeeded", "retried", "failed", "dead")


class TaskEvent(NamedTuple):
    """What a hook is told about one step of one task."""

    task_id: str | None
    """None only for a dead letter whose message could not be decoded."""
    task: str
    queue: str
    attempt: int = 1
    """1 for the first run, 2 for the first retry, ..."""
    deliveries: int = 0
    runtime_s: float | None = None
    """How long the task's function ran: for ``succeeded``, and for ``retried``,
    ``failed`` and ``dead`` when it ran (None for a message refused before running)."""
    error: str | None = None
    """For ``retried`` and ``failed``: ``Type: message``; for ``dead``: the reason."""
    countdown_s: float | None = None
    """For ``retried``: seconds until the next attempt."""


class Hook:
    """Base class of hooks; every method is a no-op."""

    def enqueued(self, event: TaskEvent) -> None:
        """A message was written to its queue (or its delayed set)."""

    def started(self, event: TaskEvent) -> None:
        """A worker process is about to call the task."""

    def succeeded(self, event: TaskEvent) -> None:
        """The task returned; its result is about to be stored."""

    def retried(self, event: TaskEvent) -> None:
        """The task raised and will run again after ``event.countdown_s``."""

    def failed(self, event: TaskEvent) -> None:
        """The task failed for good; its message goes to dead letters."""

    def dead(self, event: TaskEvent) -> None:
        """The message went to dead letters without running to a failure (rejected,
        undecodable, unknown task, delivered too often)."""


class Hooks:
    """The hooks of one app, by event: only the methods a hook overrides are called,
    so a step nobody hooks costs nothing."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.by_event: dict[str, list[tuple[Hook, str]]] = {e: [] for e in EVENTS}

    def add(self, hook: Hook) -> None:
        if not isinstance(hook, Hook):
            raise TypeError(f"a hook must be a streamq.Hook instance, got {hook!r}")
        self.hooks.append(hook)
        for event in EVENTS:
            if getattr(type(hook), event) is not getattr(Hook, event):
                self.by_event[event].append((hook, event))

    def remove(self, hook: Hook) -> None:
        self.hooks.remove(hook)
        for event in EVENTS:
            self.by_event[event] = [(h, n) for h, n in self.by_event[event] if h is not hook]

    def wants(self, event: str) -> bool:
        return bool(self.by_event[event])

    def emit(self, event: str, data: TaskEvent) -> None:
        for hook, name in self.by_event[event]:
            try:
                getattr(hook, name)(data)
            except Exception:
                log.exception("Hook %r failed in %s for task %s; ignoring.", hook, name,
                              data.task_id)
