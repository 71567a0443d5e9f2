"""What a worker process shares with its supervisor, in shared memory: the entry it
works on, and the deadline of the task it runs. The supervisor kills a task past its
``timeout`` without asking the process (which may be stuck in that very task), and
after a crash it knows which entry was being worked on: the only one to charge a
delivery for."""

from __future__ import annotations

import ctypes
import time
from typing import Any

_INFO_BYTES = 512


class LimitSlot:
    """One process's slot: set by the process, read by the supervisor."""

    def __init__(self, ctx: Any) -> None:
        self.deadline = ctx.RawValue(ctypes.c_double, 0.0)  # monotonic; 0 = none
        self.timeout = ctx.RawValue(ctypes.c_double, 0.0)
        self.running = ctx.RawArray(ctypes.c_char, _INFO_BYTES)  # b"queue\nentry id\0"

    def current(self, queue: str, entry_id: str) -> None:
        """The process took this entry (before decoding it: a message that kills its
        process while being decoded is charged too)."""
        # ``value`` writes the bytes and a NUL in C: a twentieth of a slice assignment.
        self.running.value = f"{queue}\n{entry_id}".encode()[:_INFO_BYTES - 1]

    def begin(self, timeout_s: float | None) -> None:
        """The current entry's task starts; its deadline, if it has a timeout."""
        if timeout_s:
            self.timeout.value = timeout_s
            self.deadline.value = time.monotonic() + timeout_s

    def finish(self) -> None:
        """No entry is being worked on."""
        self.deadline.value = 0.0
        self.timeout.value = 0.0
        self.running.value = b""

    def expired(self, now: float) -> bool:
        deadline = self.deadline.value
        return bool(deadline) and now > deadline

    def entry(self) -> tuple[str, str, float] | None:
        """(queue, entry id, timeout) of the entry being worked on, if any."""
        raw = bytes(self.running.raw).split(b"\x00", 1)[0].decode()
        if "\n" not in raw:
            return None
        queue, entry_id = raw.split("\n", 1)
        return queue, entry_id, float(self.timeout.value)
