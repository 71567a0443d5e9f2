"""The delayed set: messages due later (countdown, eta, retry backoff), promoted into
their stream by ``promote.lua`` once due, by any number of workers at once.

Due times are compared with the server's clock (``TIME`` inside the script), never
with the clock of the worker that promotes: workers whose clocks disagree all promote
a message at the same moment, when it is due."""

from __future__ import annotations

from ..base import keys
from .transport import Transport


class Delayed:
    def __init__(self, transport: Transport, namespace: str) -> None:
        self.transport = transport
        self.ns = namespace

    def promote(self, queue: str, now_ms: int | None = None, limit: int = 500
                ) -> tuple[int, int | None]:
        """Move messages due by the server's clock; returns (moved, next due time in
        ms or None). ``now_ms`` is ignored (kept for callers that pass their clock):
        a worker's clock may be off by minutes."""
        ns = self.ns
        moved, nxt = self.transport.call(
            "promote", [keys.delayed(ns, queue), keys.delayed_messages(ns, queue),
                        keys.stream(ns, queue)], [limit])
        return int(moved), (None if int(nxt) < 0 else int(nxt))
