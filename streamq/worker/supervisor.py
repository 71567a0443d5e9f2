"""The worker's supervisor: spawns, replaces, time-limits and shuts down processes.

Nothing else: reading, running and acknowledging live in the processes. A
replacement process takes the same consumer name as the one it replaces, so it
starts by re-claiming exactly the entries the dead one held (counted as one more
delivery each) instead of waiting for a visibility timeout. Signal handlers only
set flags; the loop acts on them.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..api.context import set_process_queues
from ..base.ids import new_worker_id, parse_worker_id
from ..data.message import now_ms
from ..data.outcome import Released
from ..server.recovery import Recovery
from ..server.registry import encode_tasks
from ..server.writer import OutcomeWriter
from . import metrics, reloading
from .leases import Leases
from .limits import LimitSlot
from .recycling import RECYCLED_EXIT, Recycling, recycled, startup_warning

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from ..api.app import StreamQ

log = logging.getLogger(__name__)

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_CRASH_WINDOW_S = 2.0
_PR_SET_PDEATHSIG = 1


@dataclass
class _Slot:
    index: int
    consumer: str
    limits: LimitSlot
    process: BaseProcess | None = None
    started_at: float = 0.0
    crashes: int = 0
    respawn_at: float = 0.0
    timed_out: tuple[str, str, float] | None = None
    charge: list[tuple[str, str]] | None = None
    """The entries a crashed process was working on (one, or those its threads ran):
    its replacement charges them a delivery; the others it held go back uncharged."""


def _pid(proc: BaseProcess) -> int:
    """The pid of a slot's process: ``_spawn`` stores it only once started."""
    pid = proc.pid
    assert pid is not None
    return pid


class Supervisor:
    def __init__(self, app: StreamQ, queues: list[str], concurrency: int, *,
                 prefetch: int | None = None, grace_s: float | None = None,
                 reload_dirs: list[str] | None = None) -> None:
        self.app = app
        self.queues = queues
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.grace_s = app.settings.grace_s if grace_s is None else grace_s
        self.worker = new_worker_id()
        self.worker_id = str(self.worker)
        self._ctx = mp.get_context("fork")
        self._slots = [self._new_slot(i) for i in range(concurrency)]
        self._stop_requested = 0
        self._reload_dirs = reload_dirs
        self._second_signal = ""
        self.restarts = 0
        """Processes replaced after a crash or a time limit (not recycled ones)."""
        self.recycles = 0
        settings = app.settings
        self.recycling = Recycling(settings.max_tasks_per_child, settings.max_memory_per_child)
        self.started_ms = now_ms()

    def _new_slot(self, i: int) -> _Slot:
        return _Slot(i, self.worker.consumer(i), LimitSlot(self._ctx))

    @property
    def worker_info(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "processes": self.concurrency, "queues": ",".join(self.queues),
                "started_ms": self.started_ms, "heartbeat_s": self.app.settings.heartbeat_s,
                "tasks": encode_tasks(list(self.app.registry))}

    # -- signals ------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_requested += 1
        if self._stop_requested == 1:
            log.warning("Received %s: no new tasks; waiting up to %.0fs for running ones "
                        "(send SIGINT again to stop at once).", signal.Signals(signum).name,
                        self.grace_s)
        elif not self._second_signal:
            # The shutdown loop acts on it, and says what it did.
            self._second_signal = "Ctrl-C" if signum == signal.SIGINT else \
                signal.Signals(signum).name

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._prune_registry()
        watcher = None
        if self._reload_dirs:
            watcher = reloading.Watcher(self._reload_dirs).start()
            log.info("Watching %s for changes (--reload).", ", ".join(watcher.dirs))
        leases = Leases(self.app.server, self.worker_id, lambda: self.worker_info,
                        [slot.consumer for slot in self._slots], self.queues,
                        self.app.settings.heartbeat_s)
        leases.start()
        warning = startup_warning(self.recycling)
        if warning:
            log.warning(warning)
        for slot in self._slots:
            self._spawn(slot)
        try:
            while not self._stop_requested and not (watcher and watcher.changed()):
                self.tick()
                time.sleep(0.02)
            code = self._shutdown()
        finally:
            leases.stop()
            if watcher is not None:
                watcher.stop()
            self._deregister()
        if watcher is not None and watcher.changed() and not self._stop_requested:
            log.warning("Python files changed; restarting the worker.")
            reloading.restart()
        return code

    def _prune_registry(self) -> None:
        """Forget workers that stopped heartbeating over an hour ago (crashed hosts)."""
        try:
            self.app.server.registry.prune()
        except Exception as exc:
            log.debug("Could not prune the worker registry: %s", exc)

    def tick(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            proc = slot.process
            if proc is not None and proc.is_alive():
                if slot.limits.expired(now):
                    self._kill_for_timeout(slot)
                continue
            if proc is not None:
                self._reap(slot, now)
            if slot.process is None and now >= slot.respawn_at:
                self._spawn(slot)

    def _reap(self, slot: _Slot, now: float) -> None:
        proc = slot.process
        assert proc is not None
        proc.join(0)
        code = proc.exitcode
        slot.process = None
        if os.environ.get(metrics.ENV):
            metrics.mark_process_dead(_pid(proc))
        if slot.timed_out is None and recycled(code, slot.limits.entry()):
            # It wrote its outcomes and handed back the rest, and logged why: its
            # successor starts at once, nothing charged, no backoff, no restart counted.
            self.recycles += 1
            slot.crashes = 0
            slot.charge = None
            slot.respawn_at = now
            log.debug("Process %d (consumer %s) recycled; starting its successor.",
                      proc.pid, slot.consumer)
            return
        if slot.timed_out is None:
            slot.charge = slot.limits.entries() or None
            log.error("Worker process %d (consumer %s) died with exit code %s; replacing it "
                      "and re-delivering its messages.", proc.pid, slot.consumer, code)
        self.restarts += 1
        if now - slot.started_at < _CRASH_WINDOW_S and slot.timed_out is None:
            slot.crashes += 1
            backoff = min(10.0, 0.1 * 2 ** slot.crashes)
            slot.respawn_at = now + backoff
        else:
            slot.crashes = 0
            slot.respawn_at = now

    def _kill_for_timeout(self, slot: _Slot) -> None:
        assert slot.process is not None
        queue, entry_id, timeout = slot.limits.entry() or ("?", "?", 0.0)
        log.error("Task in message %s (queue %s) exceeded its time limit of %gs; killing "
                  "process %d.", entry_id, queue, timeout, slot.process.pid)
        slot.timed_out = (queue, entry_id, timeout)
        slot.charge = [(queue, entry_id)]  # its threads' other tasks go back uncharged
        slot.limits.finish()
        os.kill(_pid(slot.process), signal.SIGKILL)
        slot.process.join(5)

    def _spawn(self, slot: _Slot) -> None:
        timed_out, slot.timed_out = slot.timed_out, None
        charge, slot.charge = slot.charge, None
        slot.limits.finish()
        proc = self._ctx.Process(
            target=_child_main, name=f"streamq-worker-{slot.index}",
            args=(self.app, self.queues, slot.consumer, self.worker_id, self.prefetch,
                  slot.limits, timed_out, charge, self.worker_info, self.recycling),
            daemon=False,
        )
        # Signals are blocked across the fork so one arriving before the child has
        # installed its own handlers waits for them instead of running ours there.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        slot.process = proc
        slot.started_at = time.monotonic()

    def _shutdown(self) -> int:
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                os.kill(_pid(slot.process), signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self._stop_requested < 2:
            if not any(s.process is not None and s.process.is_alive() for s in self._slots):
                break
            time.sleep(0.02)
        forced = []
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                forced.append(slot)
                os.kill(_pid(slot.process), signal.SIGKILL)
            if slot.process is not None:
                slot.process.join(5)
        handed = [self._hand_back(slot) for slot in forced]
        if self._second_signal:
            log.warning("Second %s: %s", self._second_signal,
                        self._forced_line(handed, " at once"))
        elif forced:
            log.warning("Grace period of %gs over: %s", self.grace_s,
                        self._forced_line(handed, " still running"))
        log.info("Worker %s stopped.", self.worker_id)
        return 0

    def _forced_line(self, handed: list[int | None], how: str) -> str:
        """What a forced stop did, in words: ``handed`` has, for each process killed,
        how many of its messages were handed back (None: they could not be)."""
        if not handed:
            return "no process was still running a task; stopped at once."
        back = sum(n for n in handed if n is not None)
        what = (f"killed {len(handed)} process(es){how} and handed their {back} "
                f"unfinished message(s) back to the queue, uncharged: they will run again")
        stuck = handed.count(None)
        if stuck:
            what += (f"; those of {stuck} process(es) could not be handed back (the server "
                     f"did not answer): they stay pending and are redelivered after "
                     f"claim_after_s ({self.app.settings.claim_after_s:g}s)")
        return what + "."

    def _hand_back(self, slot: _Slot) -> int | None:
        """Put a killed process's unfinished entries back as new ones, without a
        delivery charged: a deploy that outlasts a long task must not make it look
        like poison. If the server is unreachable they stay pending and are
        reclaimed (charged) later."""
        link, settings = self.app.server, self.app.settings
        recovery = Recovery(link.transport, link.broker, settings, slot.consumer, 1000)
        writer = OutcomeWriter(settings, slot.consumer)
        n = 0
        try:
            for q in self.queues:
                got = recovery.guarded(q, recovery.own)
                if got:
                    link.transport.run(writer.pack([Released(d) for d in got]))
                    n += len(got)
        except Exception as exc:
            log.warning("Could not hand back the messages of consumer %s (they stay "
                        "pending and will be reclaimed): %s", slot.consumer, exc)
            return None
        return n

    def _deregister(self) -> None:
        """Leave the registry, and the groups: a consumer name of this worker is never
        read as again, so status would list it as a dead worker's until recovery
        removed it. Consumers that still hold entries stay, for recovery."""
        try:
            self.app.server.registry.deregister(self.worker_id)
            self.app.server.broker.forget_consumers(
                self.queues, {slot.consumer for slot in self._slots})
        except Exception as exc:  # the server may be gone; the entry expires anyway
            log.debug("Could not deregister worker %s: %s", self.worker_id, exc)


def worker_pid(worker_id: str) -> int:
    parsed = parse_worker_id(worker_id)
    return parsed.pid if parsed else os.getppid()


def _child_main(app: StreamQ, queues: list[str], consumer_name: str, worker_id: str,
                prefetch: int | None, limits: LimitSlot,
                timed_out: tuple[str, str, float] | None,
                charge: list[tuple[str, str]] | None,
                worker_info: dict[str, Any], recycling: Recycling) -> None:
    from .consumer import Consumer
    from .logs import log_hooks

    app.close()  # never share the parent's sockets
    set_process_queues(queues)  # get() inside a task refuses these
    for hook in log_hooks():
        app.add_hook(hook)
    if os.environ.get(metrics.ENV):
        app.add_hook(metrics.MetricsHook(app.registry))
    parent = worker_pid(worker_id)  # the supervisor; it may already be gone
    if sys.platform == "linux":
        # SIGTERM when the supervisor dies (even by SIGKILL): stop gracefully.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    def guard(now: float) -> None:
        """An orphan (its supervisor is gone) stops reading, and enforces its running
        task's time limit itself: nobody else will."""
        if os.getppid() != parent:
            if not consumer.stopping:
                log.error("The supervisor (pid %d) is gone; stopping.", parent)
                consumer.stopping = True
            if limits.expired(now):
                log.error("The supervisor is gone and the running task exceeded its time "
                          "limit; exiting (its message stays pending and will be "
                          "reclaimed).")
                os._exit(1)

    # Signals are still blocked (see _spawn): build, install handlers, then unblock.
    consumer = Consumer(app, queues, consumer_name, worker_id=worker_id, prefetch=prefetch,
                        limits=limits, timed_out=timed_out, charge=charge,
                        worker_info=worker_info, guard=guard, recycling=recycling)

    def stop(_signum: int, _frame: Any) -> None:
        consumer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C reaches the whole process group; the supervisor decides what it means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        consumer.run()
    except Exception:
        log.exception("Worker process %d stopped on an unexpected error.", os.getpid())
        os._exit(1)
    if consumer.recycled is not None:
        back = consumer.handed_back
        log.info("Process %s (pid %d) recycled %s%s; its successor takes over.",
                 mp.current_process().name, os.getpid(), consumer.recycled,
                 f", handing back {back} unstarted message(s)" if back else "")
        os._exit(RECYCLED_EXIT)
    os._exit(0)
