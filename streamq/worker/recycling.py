"""Recycling: a worker process that handled ``--max-tasks-per-child`` messages, or whose
resident memory grew above ``--max-memory-per-child`` MB, is replaced gracefully.

The process stops reading, hands back what it read and did not start (uncharged, as at
shutdown), writes every outcome it holds, and exits with ``RECYCLED_EXIT``. Its
supervisor starts the successor at once under the same consumer name, with no crash
backoff, no delivery charged and no restart counted (a recycle is not a crash).

On the hot path the task count costs one integer compare per task
(``Consumer.run_once`` compares the batch's count with ``until_check``). With a memory
limit the process checks its RSS after every task, by one ``pread`` of
``/proc/self/statm`` (about 1.5 us; the same figure as ``VmRSS`` in
``/proc/self/status``, whose parsing costs ten times as much), so a task that
allocates is the last one its process runs.
"""

from __future__ import annotations

import os
import sys

RECYCLED_EXIT = 75
"""The exit code of a recycled process (``EX_TEMPFAIL``: "replace me"). Not 0: a
process stopped by a SIGTERM of its own, or a task calling ``sys.exit(0)``, exits 0
too, and neither is a recycle. The supervisor also checks that no task was running
at exit (a task calling ``sys.exit(75)`` is still a crash, its entry charged)."""

_NEVER = sys.maxsize
_STATM = "/proc/self/statm"


class Recycling:
    """When one worker process should be replaced (0: no limit)."""

    def __init__(self, max_tasks: int = 0, max_memory_mb: int = 0) -> None:
        self.max_tasks = max_tasks
        self.max_memory_mb = max_memory_mb
        self._rss = Rss() if max_memory_mb else None

    def until_check(self, handled: int) -> int:
        """How many more messages a process that ``handled`` these may handle before
        ``due`` must be asked (``sys.maxsize``: never)."""
        left = self.max_tasks - handled if self.max_tasks else _NEVER
        return min(left, 1) if self.max_memory_mb else left

    def read_cap(self, handled: int, count: int) -> int:
        """A read of ``count`` entries, cut to what the process may still run: entries
        read only to be handed back would lose their place in the queue."""
        if not self.max_tasks:
            return count
        return max(1, min(count, self.max_tasks - handled))

    def due(self, handled: int) -> str | None:
        """Why a process that handled ``handled`` messages must be replaced now (the end
        of its log line), or None."""
        if self.max_tasks and handled >= self.max_tasks:
            return f"after {handled} tasks (--max-tasks-per-child {self.max_tasks})"
        if self._rss is not None:
            mb = self._rss.mb()
            if mb is not None and mb > self.max_memory_mb:
                return (f"with RSS {mb} MB above --max-memory-per-child "
                        f"{self.max_memory_mb} (after {handled} tasks)")
        return None


class Rss:
    """This process's resident set size, read from an open ``/proc/self/statm``."""

    def __init__(self) -> None:
        self._fd = -1
        self._pid = 0
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4

    def kb(self) -> int | None:
        """Resident kB, or None where ``/proc`` is missing (not Linux)."""
        pid = os.getpid()
        if self._pid != pid:  # opened in this process, not inherited across a fork
            self._pid = pid
            try:
                self._fd = os.open(_STATM, os.O_RDONLY)
            except OSError:
                self._fd = -1
        if self._fd < 0:
            return None
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page_kb

    def mb(self) -> int | None:
        kb = self.kb()
        return None if kb is None else kb // 1024


def vm_rss_kb() -> int | None:
    """``VmRSS`` of ``/proc/self/status`` in kB (None without ``/proc``)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def recycled(code: int | None, running: object) -> bool:
    """Whether a process that exited with ``code``, while working on ``running`` (the
    entry of its limits slot, None when idle), was recycled rather than crashed."""
    return code == RECYCLED_EXIT and running is None


def startup_warning(recycling: Recycling) -> str | None:
    """What is wrong with a memory limit, said once by the supervisor at start: no
    ``/proc`` to read, or a limit that a fresh process (a fork of the supervisor)
    already exceeds, which would replace every process after every task."""
    if not recycling.max_memory_mb:
        return None
    kb = vm_rss_kb()
    if kb is None:
        return ("--max-memory-per-child needs /proc/self/statm (Linux); it is ignored "
                "here.")
    if kb // 1024 >= recycling.max_memory_mb:
        return (f"--max-memory-per-child {recycling.max_memory_mb} MB is below the "
                f"{kb // 1024} MB a fresh worker process starts with: every process will "
                f"be replaced after each task.")
    return None
