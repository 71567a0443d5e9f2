"""How much CPU a worker process's task threads want: what sizes how many of them run
at once (``pulled.py``).

Threads overlap waits, not computation: one interpreter lock runs the Python of one
thread at a time, so tasks that compute gain nothing from a second thread and lose
to the lock's hand-offs (measured here: +10 to +35 % of CPU per task of a
millisecond's arithmetic at 4 threads). Whether tasks wait or compute is read from
Linux's ``/proc/self/task/<tid>/schedstat`` of the task threads: the time each ran
on a CPU plus the time it was ready to run and waited for one. Over the time the
threads spent on tasks, that is the share of a task's time it wants a CPU: near 1
for tasks that compute, near 0 for tasks that sleep or wait on a socket. The
ready-to-run time matters on a loaded machine, where a computing thread gets less
than a CPU and its run time alone would pass for waiting; threads contending for
the interpreter lock count mostly as ready to run (they wake to ask for it), so
computing threads still read as computing.
"""

from __future__ import annotations

import os


class Demand:
    """The demand of some threads of this process, window after window."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._last: int | None = None

    def watch(self, native_id: int) -> None:
        """Count this thread (a Linux thread id) from the next window on."""
        try:
            self._fds.append(os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY))
        except OSError:
            pass  # not Linux, or no schedstats: sample() says None

    def _total_ns(self) -> int:
        total = 0
        for fd in self._fds:
            run, ready = os.pread(fd, 64, 0).split()[:2]
            total += int(run) + int(ready)
        return total

    def used(self) -> float | None:
        """Seconds the threads ran or were ready to run since the last call (None: the
        first call, or nothing to read)."""
        if not self._fds:
            return None
        try:
            total = self._total_ns()
        except OSError:  # a thread gone
            return None
        last, self._last = self._last, total
        return None if last is None else (total - last) / 1e9

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
