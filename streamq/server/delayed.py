"""The delayed set: messages due later (countdown, eta, retry backoff), promoted into
their stream by ``promote.lua`` once due, by any number of workers at once."""

from __future__ import annotations

from ..base import keys
from .transport import Transport


class Delayed:
    def __init__(self, transport: Transport, namespace: str) -> None:
        self.transport = transport
        self.ns = namespace

    def promote(self, queue: str, now_ms: int, limit: int = 500) -> tuple[int, int | None]:
        """Move due messages; returns (moved, next due time in ms or None)."""
        ns = self.ns
        moved, nxt = self.transport.call(
            "promote", [keys.delayed(ns, queue), keys.delayed_messages(ns, queue),
                        keys.stream(ns, queue)], [now_ms, limit])
        return int(moved), (None if int(nxt) < 0 else int(nxt))
