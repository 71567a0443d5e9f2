"""What a worker process shares with its supervisor: the running entry and its
deadline, in shared memory, so the supervisor can kill a task past its ``timeout``
without asking the process (which may be stuck in that very task)."""

from __future__ import annotations

import ctypes
import time
from typing import Any

_INFO_BYTES = 512


class LimitSlot:
    """One process's slot: set by the process, read by the supervisor."""

    def __init__(self, ctx: Any) -> None:
        self.deadline = ctx.RawValue(ctypes.c_double, 0.0)  # monotonic; 0 = none
        self.running = ctx.RawArray(ctypes.c_char, _INFO_BYTES)  # b"queue\nentry\ntimeout"

    def begin(self, queue: str, entry_id: str, timeout_s: float | None) -> None:
        if timeout_s:
            info = f"{queue}\n{entry_id}\n{timeout_s}".encode()[:_INFO_BYTES - 1]
            self.running.raw = info + b"\x00" * (_INFO_BYTES - len(info))
            self.deadline.value = time.monotonic() + timeout_s

    def end(self) -> None:
        self.deadline.value = 0.0

    def expired(self, now: float) -> bool:
        deadline = self.deadline.value
        return bool(deadline) and now > deadline

    def entry(self) -> tuple[str, str, float]:
        """(queue, entry id, timeout) of the task that has the deadline."""
        raw = bytes(self.running.raw).split(b"\x00", 1)[0].decode()
        queue, entry_id, timeout = (raw.split("\n") + ["", "", "0"])[:3]
        return queue, entry_id, float(timeout or 0)
