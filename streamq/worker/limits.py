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
_MANY_BYTES = 16384  # the entries of up to a few hundred task threads


class LimitSlot:
    """One process's slot: set by the process, read by the supervisor."""

    def __init__(self, ctx: Any) -> None:
        self.deadline = ctx.RawValue(ctypes.c_double, 0.0)  # monotonic; 0 = none
        self.timeout = ctx.RawValue(ctypes.c_double, 0.0)
        # b"queue\nentry id[\nqueue\nentry id...]\0": the first has the deadline.
        self.running = ctx.RawArray(ctypes.c_char, _MANY_BYTES)

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

    def publish(self, running: list[tuple[str, str, float, float]]) -> None:
        """The tasks running in threads now: (queue, entry id, since, timeout) each.
        The one that reaches its hard limit first goes first, with its deadline."""
        timed = [(since + timeout, timeout, q, e) for q, e, since, timeout in running
                 if timeout]
        first = min(timed) if timed else None
        order = ([(first[2], first[3])] if first else []) + [
            (q, e) for q, e, _, _ in running if first is None or (q, e) != first[2:]]
        self.put([f"{q}\n{e}".encode() for q, e in order],
                 first[0] if first else 0.0, first[1] if first else 0.0)

    def put(self, pieces: list[bytes], deadline: float, timeout: float) -> None:
        """``publish`` with each entry's ``b"queue\nentry id"`` made already, the one
        with ``deadline`` (0: none) first."""
        text = b"\n".join(pieces)
        if len(text) >= _MANY_BYTES:  # too many to list: those left out are not charged
            size, n = -1, 0           # after a crash
            while n < len(pieces) and size + 1 + len(pieces[n]) < _MANY_BYTES:
                size, n = size + 1 + len(pieces[n]), n + 1
            text = b"\n".join(pieces[:n])
        self.deadline.value = 0.0
        self.running.value = text
        self.timeout.value = timeout
        self.deadline.value = deadline

    def expired(self, now: float) -> bool:
        deadline = self.deadline.value
        return bool(deadline) and now > deadline

    def entries(self) -> list[tuple[str, str]]:
        """(queue, entry id) of every entry being worked on."""
        parts = bytes(self.running.raw).split(b"\x00", 1)[0].decode().split("\n")
        return list(zip(parts[0::2], parts[1::2], strict=False)) if len(parts) > 1 else []

    def entry(self) -> tuple[str, str, float] | None:
        """(queue, entry id, timeout) of the entry being worked on (with threads, the
        one whose hard limit comes first), if any."""
        found = self.entries()
        if not found:
            return None
        queue, entry_id = found[0]
        return queue, entry_id, float(self.timeout.value)
