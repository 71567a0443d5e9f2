"""The worker's log lines about tasks, as hooks (``streamq.Hook``).

A retry is logged at INFO; a failure for good and a dead letter at WARNING; start
and success at INFO only when that level is on (``ProgressLog`` is then added), so a
worker at ``--log-level WARNING`` pays nothing for them.
"""

from __future__ import annotations

import logging

from ..api.hooks import Hook, TaskEvent

log = logging.getLogger("streamq.task")


class ProgressLog(Hook):
    def started(self, event: TaskEvent) -> None:
        log.info("Task %s[%s] started (queue %s, attempt %d, delivery %d).", event.task,
                 event.task_id, event.queue, event.attempt, event.deliveries)

    def succeeded(self, event: TaskEvent) -> None:
        log.info("Task %s[%s] succeeded in %.4fs (queue %s, attempt %d).", event.task,
                 event.task_id, event.runtime_s or 0.0, event.queue, event.attempt)


class ProblemLog(Hook):
    def retried(self, event: TaskEvent) -> None:
        log.info("Retrying task %s[%s] in %.2fs, attempt %d: %s", event.task, event.task_id,
                 event.countdown_s or 0.0, event.attempt + 1, event.error)

    def failed(self, event: TaskEvent) -> None:
        log.warning("Task %s[%s] failed (queue %s, attempt %d): %s", event.task,
                    event.task_id, event.queue, event.attempt, event.error)

    def dead(self, event: TaskEvent) -> None:
        log.warning("Message of task %s (id %s) moved to dead letters: %s", event.task,
                    event.task_id, event.error)


def log_hooks() -> list[Hook]:
    """The hooks a worker process adds for its log lines."""
    hooks: list[Hook] = [ProblemLog()]
    if log.isEnabledFor(logging.INFO):
        hooks.append(ProgressLog())
    return hooks
