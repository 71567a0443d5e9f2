"""The housekeeping thread of one worker process. Every tick it
- hands prefetched entries back when the current task runs long, so batching never
  strands work behind a slow task;
- marks a task that runs long enough for someone to look as STARTED;
- writes held outcomes that wait behind a long task;
- promotes due delayed messages;
- every second, sweeps the outbox of canvas forwards (``streamq.server.canvas``);
- fires the app's periodic schedules when a tick is due (``periodic.py``);
and every heartbeat it refreshes the idle time of every entry the process holds
(so a long task is never reclaimed while its process lives) and the worker's
registration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..base.settings import Settings
from ..data.message import now_ms
from ..data.outcome import Outcome, Released
from ..server.link import ServerLink
from ..server.recovery import Recovery
from ..server.transport import Packed
from ..server.writer import OutcomeWriter
from .held import Held
from .periodic import PeriodicDuty
from .softlimits import SoftLimits

log = logging.getLogger(__name__)

_TICK_S = 0.01
_FLUSH_AGE_S = 0.02
_STARTED_AFTER_S = 0.02
_SWEEP_EVERY_S = 1.0


class Housekeeping:
    def __init__(self, held: Held, link: ServerLink, writer: OutcomeWriter,
                 recovery: Recovery, settings: Settings, queues: list[str], consumer: str,
                 flush: Callable[[], None], registration: tuple[str, dict[str, Any]] | None,
                 stopping: Callable[[], bool] = lambda: False,
                 guard: Callable[[float], None] | None = None,
                 soft: SoftLimits | None = None,
                 periodic: PeriodicDuty | None = None) -> None:
        self.held = held
        self.link = link
        self.writer = writer
        self.recovery = recovery
        self.settings = settings
        self.queues = queues
        self.consumer = consumer
        self.flush = flush
        self.registration = registration
        self.stopping = stopping
        self.guard = guard
        """Called every tick (the worker process checks that its supervisor lives)."""
        """(worker id, description) to heartbeat into the worker registry."""
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="streamq-housekeeping")
        self.soft = soft
        """Soft time limits of the running tasks, fired from here."""
        self.periodic = periodic
        self._marked: set[str] = set()  # entries of running tasks marked STARTED
        self._failing: dict[str, int] = {}  # duty -> failures in a row
        self._reads_before = -1  # held.reads at the last heartbeat
        self._next_sweep = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)
        if self.periodic is not None:
            try:
                self.periodic.release()
            except Exception as exc:  # a server that is gone: the takeover time applies
                log.debug("Could not release the periodic schedules: %s", exc)

    def _loop(self) -> None:
        next_hb = next_promote = 0.0
        while not self._halt.wait(_TICK_S):
            now = time.monotonic()
            if self.guard is not None:
                self._duty(self.guard, now)
            # Each duty on its own: one that fails (a server blip) must not starve the
            # others, least of all the heartbeat that keeps held entries ours.
            if self.soft is not None:
                self.soft.fire(now)
            self._duty(self._release_if_stuck, now)
            self._duty(self._mark_started, now)
            self._duty(self._flush_if_stale, now)
            if self.periodic is not None:
                self._duty(self.periodic.periodic_tasks, now)
            if now >= next_promote:
                next_promote = now + self.settings.promote_interval_s
                self._duty(self._promote, now)
            if now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_EVERY_S
                self._duty(self._sweep_outbox, now)
            if now >= next_hb and self._duty(self._heartbeat, now):
                next_hb = now + self.settings.heartbeat_s

    def _duty(self, duty: Callable[[float], None], now: float) -> bool:
        name = duty.__name__.strip("_")
        try:
            duty(now)
        except Exception as exc:
            # Once per outage, not every tick: a server that is down for a minute would
            # otherwise fill the log while a long task runs.
            failures = self._failing[name] = self._failing.get(name, 0) + 1
            (log.warning if failures == 1 else log.debug)(
                "Housekeeping (%s) failed, will retry: %s", name, exc)
            self._halt.wait(0.1)
            return False
        failures = self._failing.pop(name, 0)
        if failures:
            log.info("Housekeeping (%s) works again (after %d failed attempt(s)).", name,
                     failures)
        return True

    def _sweep_outbox(self, _now: float) -> None:
        """Delete the canvas forwards the writer saw confirmed (an idle worker writes
        nothing else to carry them), then forward again what stayed in the outbox of
        a queue read here longer than ``SWEEP_AGE_MS``: its worker died in between."""
        pipe = Packed()
        self.writer.pack_forwarded(pipe)
        if pipe.commands:
            self.link.transport.run(pipe)
        for q in self.queues:
            self.link.canvas.sweep(q)

    def _promote(self, _now: float) -> None:
        for q in self.queues:
            self.link.delayed.promote(q, now_ms())

    def _release_if_stuck(self, now: float) -> None:
        h = self.held
        with h.lock:
            # Stuck behind a long task, or stopping (a deploy): if the grace period runs
            # out, only the running task may be killed with its entry still pending.
            if h.current is None or not h.buffer or (
                    now - h.current_since < self.settings.release_after_s
                    and not self.stopping()):
                return
            # A suspect (delivered before: it may have killed a process) keeps its
            # place: handed back, it would be a new entry with its deliveries reset.
            stopping = self.stopping()
            items: list[Outcome] = [Released(d) for d in h.buffer
                                    if stopping or d.deliveries == 1]
            if not items:
                return
            h.buffer = deque(d for d in h.buffer if not stopping and d.deliveries > 1)
        self.link.transport.run(self.writer.pack(items))
        log.info("Handed back %d prefetched message(s).", len(items))

    def _mark_started(self, now: float) -> None:
        h = self.held
        # Holding the lock while writing means the final record (held after the
        # consumer clears ``running``) can never be overwritten by STARTED.
        with h.lock:
            running = h.running_tasks()
            if not running:
                self._marked.clear()
                return
            now_running = {r.delivery.entry_id for r in running}
            self._marked &= now_running
            for r in running:
                if r.delivery.entry_id in self._marked or now - r.since < _STARTED_AFTER_S \
                        or not r.task_id:  # no task id: it keeps no record
                    continue
                self._marked.add(r.delivery.entry_id)
                self.link.records.mark_started(r.delivery.queue, r.task_id, self.consumer,
                                               r.delivery.deliveries)

    def _flush_if_stale(self, now: float) -> None:
        h = self.held
        with h.lock:
            stale = bool(h.outcomes) and h.current is not None and \
                now - h.outcomes_since >= _FLUSH_AGE_S
        if stale:
            self.flush()

    def _heartbeat(self, _now: float) -> None:
        for q, ids in self.held.entry_ids().items():
            lost = set(self.recovery.heartbeat(q, ids))
            if lost:
                log.warning("%d message(s) on queue %s were reclaimed by another worker; "
                            "this process will not run them.", len(lost), q)
                self.held.drop(q, lost)
        if self.registration is not None:
            worker_id, info = self.registration
            h = self.held
            # Read since the last heartbeat, or waiting in a read now: the registration
            # says when (a diagnosis of get(timeout=) and status read it).
            reads = h.reads
            if reads != self._reads_before or (h.current is None and not h.buffer):
                info = dict(info, last_read_ms=now_ms())
            self._reads_before = reads
            self.link.registry.heartbeat(worker_id, info)
