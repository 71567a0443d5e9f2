"""One worker process's loop: read a batch, run it, write the outcomes in one round trip.

The consumer buffers deliveries and outcomes and batches their writes, nothing else:
the executor decides each outcome, the ``OutcomeWriter`` turns a batch of them into
one write, which rides with the next read (``Broker.read``). A housekeeping thread
(``housekeeping.py``) keeps held entries alive and hands back prefetched ones; shared
state is guarded by one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..api.hooks import TaskEvent
from ..base import keys
from ..base.errors import BrokerConnectionError, BrokerError
from ..base.ids import worker_of
from ..data.outcome import COUNTED, Dead, Delivery, Failed, Outcome, Released, Retried, Succeeded
from ..server.connection import TRANSIENT
from ..server.recovery import Recovery
from ..server.transport import Packed
from ..server.writer import OutcomeWriter
from .batching import BatchSize
from .continuations import Continuations
from .executor import Call, Executor
from .held import Held, Running
from .housekeeping import Housekeeping
from .ordering import Ordering
from .periodic import PeriodicDuty
from .pulled import PulledThreads
from .recycling import Recycling
from .threaded import Threads

if TYPE_CHECKING:
    from ..api.app import StreamQ
    from .limits import LimitSlot

log = logging.getLogger(__name__)

# Outcomes that force a flush before the batch's read: above the default prefetch, so
# a batch is normally written with the next read, in one round trip; only a larger
# --prefetch flushes mid-batch, to bound what is held.
_FLUSH_SIZE = 200


class Consumer:
    """Reads from ``queues`` as consumer ``name`` and runs what it reads."""

    def __init__(self, app: StreamQ, queues: list[str], name: str, *, worker_id: str = "",
                 prefetch: int | None = None, block_ms: int | None = None,
                 limits: LimitSlot | None = None,
                 timed_out: tuple[str, str, float] | None = None,
                 charge: list[tuple[str, str]] | None = None,
                 worker_info: dict[str, Any] | None = None,
                 guard: Callable[[float], None] | None = None,
                 recycling: Recycling | None = None) -> None:
        self.app = app
        self.settings = settings = app.settings
        link = app.server
        self.link = link
        self.broker = link.broker
        self.queues = list(queues)
        self.name = name
        self.worker_id = worker_id or worker_of(name)
        self.prefetch = prefetch or settings.prefetch
        self.batch = BatchSize(self.prefetch)
        """Sizes each read by the tasks' run time (``batching.py``), up to prefetch."""
        self.block_ms = settings.block_ms if block_ms is None else block_ms
        self.hooks = app.hooks
        self.executor = Executor(app.registry, app.accept_content_types, settings.serializer,
                                 name, settings.result_ttl, signer=app.signer,
                                 max_message_bytes=settings.max_message_bytes,
                                 max_result_bytes=settings.max_result_bytes,
                                 secrets=settings.secrets)
        self.continuations = self.executor.continuations = Continuations(
            settings, link.canvas, app.accept_content_types, app.signer, name)
        self.ordering = self.executor.ordering = Ordering(settings.namespace, name,
                                                          self._behind_outcomes)
        self.worker_info = worker_info
        self.worker_key = keys.worker(settings.namespace, self.worker_id) \
            if worker_info is not None else None
        self.writer = OutcomeWriter(settings, name, self.worker_key)
        self.writer.send_forwards = not self.continuations.crash_after_outcome
        self.recovery = Recovery(link.transport, link.broker, settings, name, self.prefetch)
        self.limits = limits
        self.timed_out = timed_out
        self.charge = charge
        self.guard = guard
        """(queue, entry id) a crashed predecessor was working on: charged a delivery."""
        self.stopping = False
        self.held = Held()
        self._housekeeping: Housekeeping | None = None
        self._next_reclaim = 0.0
        self.reading = list(self.queues)
        """The queues read: those whose consumer group exists."""
        self.processed = 0
        self.recycling = recycling or Recycling()
        self.recycled: str | None = None
        """Why this process is being replaced (``recycling.py``): it reads no more."""
        self.handed_back = 0
        # Only the queues read count: a worker of sync queues keeps the faster loop
        # (an async task routed there anyway runs in it, one at a time).
        self.has_async = any(t.is_async for t in app.registry.values()
                             if t.options.queue in self.queues)
        self.threads: Threads | PulledThreads | None = \
            Threads(self, settings.threads) if self.has_async else \
            PulledThreads(self, settings.threads) if settings.threads > 1 else None
        """Runs tasks in threads (``pulled.py``; with async tasks ``threaded.py``); None:
        this loop runs them."""

    # -- lifecycle -------------------------------------------------------------------
    def start(self, *, housekeeping: bool = True) -> None:
        """Create groups, take back this consumer's own pending entries, start threads."""
        self._ensure_groups()
        for q in self.reading:
            charge = {e for queue, e in self.charge or () if queue == q}
            got = self.recovery.guarded(q, self.recovery.own, charge)
            if got:
                log.info("Recovered %d pending message(s) of consumer %s on queue %s.",
                         len(got), self.name, q)
                self.held.add(got)
        soft = self.executor.soft_limits
        if not soft.installed and threading.current_thread() is threading.main_thread() \
                and any(t.options.soft_timeout for t in self.app.registry.values()):
            soft.install()
        if housekeeping:
            self._housekeeping = Housekeeping(
                self.held, self.link, self.writer, self.recovery, self.settings, self.queues,
                self.name, self.flush,
                None if self.worker_info is None else (self.worker_id, self.worker_info),
                lambda: self.stopping, self.guard, soft, PeriodicDuty.of(self.app))
            self._housekeeping.start()

    def _ensure_groups(self) -> None:
        """Read the queues whose group exists; a full server may refuse to create one
        (tried again at each reclaim)."""
        self.reading = [q for q in self.queues if self.broker.ensure_group(q)]

    def run(self) -> None:
        """Run until ``stopping``; rides out server outages with capped backoff."""
        delay = 0.1
        halt = threading.Event()
        while not self.stopping:
            try:
                if self._housekeeping is None:
                    self.start()
                self.run_once()
                delay = 0.1
            except BrokerError as exc:
                if not isinstance(exc, BrokerConnectionError) and exc.code not in TRANSIENT:
                    raise
                from ..server.embedded import revive

                # An embedded server this worker resolved and that was stopped: started
                # again (logged once, by the process that starts it), and on at once.
                if isinstance(exc, BrokerConnectionError) and revive(self.settings.url):
                    continue
                log.warning("Server unavailable (%s); retrying in %.1fs.", exc, delay)
                halt.wait(delay)
                delay = min(delay * 2, 5.0)
        self.stop()

    def stop(self) -> None:
        """Write outcomes, hand back unstarted entries, stop the thread."""
        self.stopping = True
        if self.threads is not None:
            # Tasks running in threads finish first (the supervisor kills the process
            # when its grace runs out; their entries stay pending, to run again).
            self.threads.wait_idle()
            self.threads.close()
        if self._housekeeping is not None:
            self._housekeeping.stop()
            self._housekeeping = None
        unstarted: list[Outcome] = [Released(d) for d in self.held.take_buffer()]
        try:
            self.flush(unstarted)
        except Exception as exc:
            log.warning("Could not write the last outcomes (their messages stay pending and "
                        "will be re-delivered): %s", exc)

    # -- the loop --------------------------------------------------------------------
    def run_once(self, now: float | None = None) -> int:
        """One iteration: fetch if nothing is buffered, then run what is buffered."""
        if self.recycled is not None and self.threads is None:
            self._retire()
            return 0
        now = time.monotonic() if now is None else now
        held = self.held
        if not held.buffer and now >= self._next_reclaim:
            self._next_reclaim = now + max(1.0, self.settings.heartbeat_s)
            if len(self.reading) < len(self.queues):
                self._ensure_groups()
            self._reclaim()
        if self.threads is not None:
            return self.threads.run_once()
        return self.run_here()

    def run_here(self) -> int:
        """Read if nothing is buffered, then run what is buffered here, one at a time
        (also a threaded process whose tasks compute: ``pulled.py``)."""
        held = self.held
        if not held.buffer:
            held.add(self._flush_and_read())
        done = 0
        check = self.recycling.until_check(self.processed)
        began = time.monotonic()
        while not self.stopping:
            d = held.next()
            if d is None:
                break
            if d.deliveries > 1 and held.outcomes:
                # A redelivered entry may be the one that killed this process's
                # predecessor: write what is done first, so that it is not run again.
                self.flush()
            outcome = self.handle(d)
            done += 1
            if held.decided(outcome) >= _FLUSH_SIZE:
                self.flush()
            if done >= check:  # the only cost of recycling per task: one compare
                self.recycled = self.recycling.due(self.processed + done)
                if self.recycled is not None:
                    break
                check = done + self.recycling.until_check(self.processed + done)
        if done:
            self.batch.observe((time.monotonic() - began) / done)
        # Outcomes still held here ride with the next read (_flush_and_read): one round
        # trip per batch; a long task's are flushed by the housekeeping thread.
        self.processed += done
        return done

    def handle(self, d: Delivery) -> Outcome:
        """Decide and run one delivery here, in this thread."""
        if self.limits is not None:
            self.limits.current(d.queue, d.entry_id)
        timed_out = None
        if self.timed_out and (d.queue, d.entry_id) == self.timed_out[:2]:
            timed_out, self.timed_out = self.timed_out[2], None
        prepared = self.executor.prepare(d, timed_out=timed_out)
        if isinstance(prepared, Call):
            return self._run(prepared)
        self._emit(prepared, None)
        if self.limits is not None:
            self.limits.finish()
        return prepared

    def _run(self, call: Call) -> Outcome:
        d, msg = call.delivery, call.message
        self.emit_started(call)
        held = self.held
        with held.lock:
            held.running = Running(d, "" if msg.ignore_result else msg.id, held.current_since)
        if self.limits is not None:
            self.limits.begin(call.task.options.timeout)
        t0 = time.perf_counter()
        try:
            outcome = self.executor.run(call)
        finally:
            # Before the outcome is held: whoever watches the running task (time limit,
            # STARTED marker) must see it finished first.
            if self.limits is not None:
                self.limits.finish()
            with held.lock:
                held.running = None
        self._emit(outcome, call, time.perf_counter() - t0)
        return outcome

    def emit_started(self, call: Call) -> None:
        """The ``started`` hook of a call about to run (here or in a thread)."""
        if self.hooks.wants("started"):
            msg = call.message
            self.hooks.emit("started", TaskEvent(msg.id, msg.task, msg.queue, msg.retries + 1,
                                                 call.delivery.deliveries))

    def _emit(self, o: Outcome, call: Call | None, ran_s: float | None = None) -> None:
        event = COUNTED.get(type(o))
        if event is None or not self.hooks.wants(event):
            return
        d = o.delivery
        attempt = (call.message.retries if call else getattr(o, "retries", 0)) + 1
        queue = call.message.queue if call else d.queue
        task_id = getattr(o, "task_id", None)
        if isinstance(o, Succeeded):
            data = TaskEvent(task_id, o.task, queue, attempt, d.deliveries, o.runtime_s)
        elif isinstance(o, Retried):
            data = TaskEvent(task_id, o.task, queue, attempt, d.deliveries, ran_s,
                             error=o.error, countdown_s=o.countdown_s)
        elif isinstance(o, Failed):
            data = TaskEvent(task_id, o.task, queue, attempt, d.deliveries, ran_s,
                             error=o.error)
        elif isinstance(o, Dead):
            data = TaskEvent(task_id, o.task, queue, attempt, d.deliveries, ran_s,
                             error=o.reason)
        else:
            return
        self.hooks.emit(event, data)

    # -- writing ---------------------------------------------------------------------
    def _flush_and_read(self, count: int | None = None, block_ms: int | None = -1
                        ) -> list[Delivery]:
        """Write held outcomes and read the next batch in one round trip.

        The read blocks (returning at once when entries are waiting), and the writes
        before it in the same pipeline take effect before it blocks."""
        outcomes = self.held.take_outcomes()
        pipe = self.writer.pack(outcomes) if outcomes else Packed()
        try:
            if not self.reading:  # only queues a full server could not create yet
                if pipe.commands:
                    self.link.transport.run(pipe)
                time.sleep(self.block_ms / 1000)
                return []
            if count is None:
                count = self.ordering.read_count(
                    self.recycling.read_cap(self.processed, self.batch.count()))
            got = self.broker.read(self.name, self.reading, count,
                                   self.block_ms if block_ms == -1 else block_ms, pipe=pipe)
        except Exception:
            self.held.restore_outcomes(outcomes)
            raise
        self.continuations.written(self.writer, pipe, outcomes)
        return got

    def retire_if_due(self, finished: int, wait_idle: Callable[[], object]) -> bool:
        """A thread loop's recycling check: once ``finished`` tasks (or memory) call for
        it, read no more, let the running tasks end (``wait_idle``), then retire."""
        if self.recycled is None:
            self.recycled = self.recycling.due(finished)
        if self.recycled is None:
            return False
        wait_idle()
        self._retire()
        return True

    def _retire(self) -> None:
        """A recycled process: hand back what it read and did not start (uncharged, as
        at shutdown), write every outcome it holds, then stop. A failed write raises
        into ``run``, which rides out the outage and retires again."""
        back: list[Outcome] = [Released(d) for d in self.held.take_buffer()]
        self.flush(back)
        self.handed_back += len(back)
        self.stopping = True

    def _behind_outcomes(self, command: bytes) -> Any:
        """Write held outcomes with ``command`` behind them, in one round trip; its
        reply (a keyed call's gate: ``ordering.py``)."""
        return self._write(self.held.take_outcomes(), command)[-1]

    def flush(self, extra: list[Outcome] | None = None) -> None:
        """Write held outcomes (and ``extra``) now, in one round trip."""
        outcomes = self.held.take_outcomes() + (extra or [])
        if outcomes:
            self._write(outcomes)

    def _write(self, outcomes: list[Outcome], behind: bytes | None = None) -> list[Any]:
        """One round trip of ``outcomes`` (and ``behind`` after them); the replies. A
        failed write puts the outcomes back, to be written again."""
        pipe = self.writer.pack(outcomes) if outcomes else Packed()
        if behind is not None:
            pipe.commands.append(behind)
        try:
            replies = self.link.transport.run(pipe)
        except Exception:
            self.held.restore_outcomes(outcomes)
            raise
        self.continuations.written(self.writer, pipe, outcomes)
        return replies

    # -- recovery --------------------------------------------------------------------
    def _reclaim(self) -> None:
        """Take over entries nobody is working on (see ``streamq.server.recovery``):
        our own orphans once they missed two heartbeats, those of workers known dead
        after three, and anything idle longer than ``claim_after_s``."""
        hb_ms = int(self.settings.heartbeat_s * 1000)
        rec = self.recovery
        live = self.link.registry.live(3, self.settings.heartbeat_s) | {self.worker_id}
        held = self.held.entry_ids()
        for q in self.reading:
            got = rec.guarded(q, rec.orphans, set(held.get(q, ())), 2 * hb_ms)
            got += rec.guarded(q, rec.of_dead_workers, live, 3 * hb_ms)
            got += rec.guarded(q, rec.autoclaim, int(self.settings.claim_after_s * 1000),
                               live)
            if got:
                log.warning("Reclaimed %d message(s) on queue %s from dead consumers.",
                            len(got), q)
                self.held.add(got)
