"""The worker's log lines about tasks, as hooks (``streamq.Hook``).

A retry is logged at INFO; a failure for good and a dead letter at WARNING; start
and success at INFO only when that level is on (``ProgressLog`` is then added), so a
worker at ``--log-level WARNING`` pays nothing for them.

Each line also carries the task's fields as attributes of its log record
(``extra=``): ``event``, ``task_id``, ``task``, ``queue``, ``attempt``,
``deliveries`` and, where known, ``runtime_s``, ``countdown_s`` and ``error``.
``--log-format json`` prints them as fields of their own (``TASK_FIELDS``); the
plain format shows them in the message only.
"""

from __future__ import annotations

import logging
from typing import Any

from ..api.hooks import Hook, TaskEvent

log = logging.getLogger("streamq.task")

TASK_FIELDS = ("event", "task_id", "task", "queue", "attempt", "deliveries", "runtime_s",
               "countdown_s", "error")
"""The attributes a task's log record carries (None values are left out)."""


def task_fields(event: str, e: TaskEvent, **overrides: Any) -> dict[str, Any]:
    """The ``extra=`` of one task log line: ``TaskEvent`` fields by ``TASK_FIELDS`` name."""
    fields: dict[str, Any] = {"event": event, "task_id": e.task_id, "task": e.task,
                              "queue": e.queue, "attempt": e.attempt,
                              "deliveries": e.deliveries,
                              "runtime_s": None if e.runtime_s is None else
                              round(e.runtime_s, 6),
                              "countdown_s": None if e.countdown_s is None else
                              round(e.countdown_s, 3),
                              "error": e.error}
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


class ProgressLog(Hook):
    def started(self, event: TaskEvent) -> None:
        log.info("Task %s[%s] started (queue %s, attempt %d, delivery %d).", event.task,
                 event.task_id, event.queue, event.attempt, event.deliveries,
                 extra=task_fields("started", event))

    def succeeded(self, event: TaskEvent) -> None:
        log.info("Task %s[%s] succeeded in %.4fs (queue %s, attempt %d).", event.task,
                 event.task_id, event.runtime_s or 0.0, event.queue, event.attempt,
                 extra=task_fields("succeeded", event))


class ProblemLog(Hook):
    def retried(self, event: TaskEvent) -> None:
        # The attempt that failed is the event's; the line names the one to come.
        log.info("Retrying task %s[%s] in %.2fs, attempt %d: %s", event.task, event.task_id,
                 event.countdown_s or 0.0, event.attempt + 1, event.error,
                 extra=task_fields("retried", event))

    def failed(self, event: TaskEvent) -> None:
        log.warning("Task %s[%s] failed (queue %s, attempt %d): %s", event.task,
                    event.task_id, event.queue, event.attempt, event.error,
                    extra=task_fields("failed", event))

    def dead(self, event: TaskEvent) -> None:
        log.warning("Message of task %s (id %s) moved to dead letters: %s", event.task,
                    event.task_id, event.error, extra=task_fields("dead", event))


def log_hooks() -> list[Hook]:
    """The hooks a worker process adds for its log lines."""
    hooks: list[Hook] = [ProblemLog()]
    if log.isEnabledFor(logging.INFO):
        hooks.append(ProgressLog())
    return hooks
