"""A hook that records every event it sees, for the hook tests."""

from __future__ import annotations

from streamq import Hook, TaskEvent


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[tuple[str, TaskEvent]] = []

    def enqueued(self, event: TaskEvent) -> None:
        self.events.append(("enqueued", event))

    def started(self, event: TaskEvent) -> None:
        self.events.append(("started", event))

    def succeeded(self, event: TaskEvent) -> None:
        self.events.append(("succeeded", event))

    def retried(self, event: TaskEvent) -> None:
        self.events.append(("retried", event))

    def failed(self, event: TaskEvent) -> None:
        self.events.append(("failed", event))

    def dead(self, event: TaskEvent) -> None:
        self.events.append(("dead", event))
