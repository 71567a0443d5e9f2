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
    """The task whose function is being called now."""

    delivery: Delivery
    task_id: str
    since: float


class Held:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffer: deque[Delivery] = deque()
        self.outcomes: list[Outcome] = []
        self.outcomes_since = 0.0
        self.current: Delivery | None = None
        """Taken from the buffer and not finished (prepared, running or deciding)."""
        self.current_since = 0.0
        self.running: Running | None = None
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

    def decided(self, outcome: Outcome) -> int:
        """Hold the current delivery's outcome; returns how many are held."""
        with self.lock:
            self.current = None
            if not self.outcomes:
                self.outcomes_since = time.monotonic()
            self.outcomes.append(outcome)
            return len(self.outcomes)

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
