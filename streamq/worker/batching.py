"""How many entries one worker process asks for in its next read.

A batch amortises the round trip, which is what makes noop tasks drain fast; but every
entry a process holds is one no other process can start. So the batch is sized by how
long the process's tasks take: at most ``WINDOW_S`` of work at once, and never more than
``--prefetch``. Slow tasks (an HTTP call) are read one at a time and spread over every
free process; tasks of a few microseconds are read ``--prefetch`` at a time.

The estimate is the average run time of the last batch's tasks: a whole batch, so
that one task the scheduler preempted among a hundred fast ones does not shrink the
next read. It follows a slower batch at once and a faster one gradually, so slow tasks
read one at a time stay one at a time even when a quick one comes between them, and
fast tasks earn their batch back within a few batches. Before the first batch has run
nothing is known, so the first read asks for one entry.
"""

from __future__ import annotations

WINDOW_S = 0.05
"""The most work, in seconds of run time, one read takes from the queue."""

_DECAY = 0.7
"""Weight of the estimate when a batch is faster than it."""


class BatchSize:
    def __init__(self, limit: int, window_s: float = WINDOW_S) -> None:
        if limit < 1:
            raise ValueError(f"a batch needs at least one entry, got limit={limit}")
        self.limit = limit
        self.window_s = window_s
        self.per_task_s: float | None = None
        """The run time of one task as this process has seen it (None: none run yet)."""

    def observe(self, seconds: float) -> None:
        """The last batch's tasks took ``seconds`` each, on average, from being taken to
        their outcomes being held."""
        est = self.per_task_s
        if est is None or seconds >= est:
            self.per_task_s = seconds
        else:
            self.per_task_s = _DECAY * est + (1 - _DECAY) * seconds

    def count(self) -> int:
        """How many entries the next read asks for."""
        est = self.per_task_s
        if est is None:
            return 1
        if est <= 0:
            return self.limit
        return max(1, min(self.limit, int(self.window_s / est)))
