"""Per-key order on partitioned queues: the gate a keyed call passes before it runs.

Each call with a ``partition_key`` drew a number for its key when it was enqueued
(``enqueue_keyed.lua``). It may run only when that number is its key's next
(``gate.lua``); otherwise the gate parks it, out of the stream, and the final outcome
of the call before it (the 'K' step of ``outcomes.lua``, in the same script that
writes that outcome) puts it back. A retry or a hand-back is not final, so the key
waits for it; a crash leaves the call pending, and whoever reclaims it passes the
gate again with the same number. The cost: one round trip per keyed call (the held
outcomes ride in it), and a parked call's second trip through the stream.

A batch read hands a process runs of consecutive entries, so several calls of each
key; another process reading the next run would find each of its keys busy and park
nearly all it read. So a process that has had a call parked in the last
``NARROW_S`` seconds reads one entry at a time (``read_count``): consecutive entries
mostly carry different keys, which then run side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..base import keys
from ..data.outcome import Gone, Outcome
from ..server.transport import script_command
from .executor import Call

NARROW_S = 1.0


class Ordering:
    """``executor.prepare``'s gate for keyed calls (see the module docstring)."""

    def __init__(self, namespace: str, consumer: str,
                 exchange: Callable[[bytes], Any]) -> None:
        self.ns = namespace
        self.consumer = consumer
        self.parked_at = 0.0
        """When this process last had a call parked (``time.monotonic()``)."""
        self._exchange = exchange
        """Sends a command behind the held outcomes (one of them may be the key's call
        just before, whose write lets this one run), in one round trip; its reply."""

    def __call__(self, call: Call) -> Call | Outcome:
        d, key = call.delivery, call.message.key
        assert key is not None
        ns, queue = self.ns, d.queue
        answer = int(self._exchange(script_command(
            "gate", [keys.stream(ns, queue), keys.order(ns, queue),
                     keys.parked(ns, queue, key), keys.record(ns, queue, call.message.id)],
            [keys.GROUP, self.consumer, d.entry_id, key, d.raw or b""])))
        if answer < 0:  # parked until its turn (the gate took it out of the stream)
            self.parked_at = time.monotonic()
            return Gone(d)
        if answer > 0:
            d.order = (key, answer)
        return call

    def read_count(self, count: int) -> int:
        """The next read's count: 1 while calls are being parked (see the module doc)."""
        return 1 if self.parked_at and time.monotonic() - self.parked_at < NARROW_S \
            else count
