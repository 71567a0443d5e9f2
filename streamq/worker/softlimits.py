"""Soft time limits: ``SoftTimeLimitExceeded`` raised inside a task, in its own thread.

A task thread gets the exception through ``PyThreadState_SetAsyncExc``: it arrives at
the next bytecode the thread runs, so a blocking call in C finishes first. The main
thread (a process running one task at a time) gets it from a signal handler instead,
which also interrupts a sleep or a blocking read.

Only a task still inside its function is ever interrupted: ``arm`` and ``disarm``
bracket the call, ``fire`` picks its targets under the same lock, and the executor
catches what arrives while the call winds up (``disarm`` runs inside its ``try``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any

from ..base.errors import SoftTimeLimitExceeded

SIGNAL = signal.SIGUSR1
"""What the main thread is told with (Celery's choice for the same purpose)."""

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class SoftLimits:
    """The soft deadlines of the tasks one process runs, by thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, float] = {}  # thread ident -> monotonic deadline
        self._main = threading.main_thread().ident
        self._main_in_task = False
        self.installed = False

    def install(self) -> None:
        """Take ``SIGNAL`` in the main thread (a worker process calls this once)."""
        signal.signal(SIGNAL, self._on_signal)
        self.installed = True

    def arm(self, seconds: float) -> None:
        """The calling thread starts a task with this soft limit."""
        ident = threading.get_ident()
        with self._lock:
            self._armed[ident] = time.monotonic() + seconds
            if ident == self._main:
                self._main_in_task = True

    def disarm(self) -> None:
        """The calling thread's task returned (or raised)."""
        ident = threading.get_ident()
        with self._lock:
            self._armed.pop(ident, None)
            if ident == self._main:
                self._main_in_task = False

    def next_deadline(self) -> float:
        with self._lock:
            return min(self._armed.values(), default=0.0)

    def fire(self, now: float) -> int:
        """Interrupt every task past its soft limit (once each); returns how many."""
        fired = 0
        with self._lock:
            for ident, deadline in list(self._armed.items()):
                if now < deadline:
                    continue
                del self._armed[ident]
                fired += 1
                if ident == self._main:
                    if self.installed:
                        os.kill(os.getpid(), SIGNAL)
                else:
                    _set_async_exc(ident, SoftTimeLimitExceeded)
        return fired

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        # Runs in the main thread, between its bytecodes: the flag is its own.
        if self._main_in_task:
            self._main_in_task = False
            raise SoftTimeLimitExceeded  # the executor words it, with the limit


def checkpoint() -> None:
    """A call, so that an exception sent to this thread arrives here at the latest."""
