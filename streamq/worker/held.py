"""What one worker process holds, shared by its loop and its housekeeping thread under
one lock: deliveries read and not started, the one being worked on, and outcomes
decided but not yet written (their entries are still pending and this process's)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import NamedTuple

from ..data.outcome import Delivery, Outcome


class Running(NamedTuple):
    """A task whose function is being called now."""

    delivery: Delivery
    task_id: str
    since: float
    timeout: float = 0.0
    """Its hard limit in seconds (0: none); with threads, the supervisor kills the
    process at the earliest of them."""


class Held:
    def __init__(self) -> None:
        self.lock = threading.RLock()  # re-entered by the task threads' bookkeeping
        self.buffer: deque[Delivery] = deque()
        self.outcomes: list[Outcome] = []
        self.outcomes_since = 0.0
        self.current: Delivery | None = None
        """Taken from the buffer and not finished (prepared, running or deciding)."""
        self.current_since = 0.0
        self.running: Running | None = None
        """The task the loop itself runs (one at a time)."""
        self.active: dict[tuple[str, str], Running] = {}
        """Tasks running in threads, by (queue, entry id)."""
        self.changed = threading.Condition(self.lock)
        """Notified when a task thread finishes."""
        self.reads = 0
        """Batches added (reads and recoveries, empty ones too): the heartbeat tells
        from it whether this process read its queues since the last one."""

    def add(self, deliveries: list[Delivery]) -> None:
        self.reads += 1  # only the consumer's thread adds
        if deliveries:
            with self.lock:
                self.buffer.extend(deliveries)

    def next(self) -> Delivery | None:
        """The next buffered delivery, now the current one (None when empty)."""
        with self.lock:
            if not self.buffer:
                return None
            d = self.current = self.buffer.popleft()
            self.current_since = time.monotonic()
            return d

    def pop(self) -> Delivery | None:
        """The next buffered delivery (None when empty), current or not."""
        with self.lock:
            return self.buffer.popleft() if self.buffer else None

    def push_front(self, d: Delivery) -> None:
        """Put a delivery back at the head of the buffer (it could not start yet)."""
        with self.lock:
            self.buffer.appendleft(d)

    def make_current(self, d: Delivery) -> None:
        with self.lock:
            self.current, self.current_since = d, time.monotonic()

    def add_outcome(self, outcome: Outcome) -> None:
        """Hold an outcome decided without running a task (the current one is not
        touched: with threads, it is whichever started last)."""
        with self.lock:
            if not self.outcomes:
                self.outcomes_since = time.monotonic()
            self.outcomes.append(outcome)

    def decided(self, outcome: Outcome) -> int:
        """Hold the current delivery's outcome; returns how many are held."""
        with self.lock:
            self.current = None
            if not self.outcomes:
                self.outcomes_since = time.monotonic()
            self.outcomes.append(outcome)
            return len(self.outcomes)

    def started(self, r: Running) -> None:
        """A task starts in a thread (it is the current delivery, for housekeeping:
        the most recent start tells when the loop last got on)."""
        with self.lock:
            self.active[(r.delivery.queue, r.delivery.entry_id)] = r
            self.current, self.current_since = r.delivery, r.since

    def finished(self, d: Delivery, outcome: Outcome) -> None:
        """A task thread's outcome; wakes the loop."""
        with self.lock:
            self.active.pop((d.queue, d.entry_id), None)
            if self.current is d:
                self.current = next(iter(self.active.values())).delivery \
                    if self.active else None
            if not self.outcomes:
                self.outcomes_since = time.monotonic()
            self.outcomes.append(outcome)
            self.changed.notify_all()

    def running_tasks(self) -> list[Running]:
        """Every task being called now (the loop's own and the threads')."""
        with self.lock:
            tasks = list(self.active.values())
            if self.running is not None:
                tasks.append(self.running)
        return tasks

    def take_outcomes(self) -> list[Outcome]:
        with self.lock:
            taken, self.outcomes = self.outcomes, []
        return taken

    def restore_outcomes(self, outcomes: list[Outcome]) -> None:
        """Put back outcomes whose write failed, to write them again: every write in a
        batch is idempotent or guarded by an ownership check in its script."""
        if outcomes:
            with self.lock:
                self.outcomes[:0] = outcomes

    def take_buffer(self) -> list[Delivery]:
        with self.lock:
            items = list(self.buffer)
            self.buffer.clear()
        return items

    def entry_ids(self) -> dict[str, list[str]]:
        """Every entry held, by queue: buffered, current, decided."""
        with self.lock:
            items = [o.delivery for o in self.outcomes]
            if self.current is not None:
                items.append(self.current)
            items += [r.delivery for r in self.active.values() if r.delivery is not
                      self.current]
            items += self.buffer
        out: dict[str, list[str]] = {}
        for d in items:
            out.setdefault(d.queue, []).append(d.entry_id)
        return out

    def drop(self, queue: str, lost: set[str]) -> None:
        """Forget buffered entries another worker reclaimed: it owns them now."""
        with self.lock:
            self.buffer = deque(d for d in self.buffer
                                if not (d.queue == queue and d.entry_id in lost))
