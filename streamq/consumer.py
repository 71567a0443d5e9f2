"""One worker process's loop: read a batch, execute, write outcomes in one pipeline.

Threads: the main thread reads and runs tasks; a housekeeping thread
- refreshes the idle time of every entry this process holds (heartbeat), so a
  long task is never reclaimed while its process lives;
- hands prefetched entries back when the current task runs long, so batching
  never strands work behind a slow task;
- promotes due delayed messages, marks long tasks STARTED, flushes stale
  outcomes, and keeps the worker's registration alive.
Shared state is guarded by one lock; Redis clients are thread-safe pools.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import redis

from . import keys, results
from .broker import Delivery, Packed
from .broker import as_str as _s
from .connection import is_nogroup
from .errors import BrokerConnectionError
from .executor import Batch, Executor, flush
from .message import Message, now_ms

if TYPE_CHECKING:
    from .app import StreamQ

log = logging.getLogger(__name__)

# Outcomes (not commands) that force a flush before the batch's read: above the
# default prefetch, so a batch is normally written with the next read, in one round
# trip; only a larger --prefetch flushes mid-batch, to bound what is held.
_FLUSH_SIZE = 200
_FLUSH_AGE_S = 0.01
_STARTED_AFTER_S = 0.02
_TICK_S = 0.01


def worker_id_of(consumer: str) -> str:
    return consumer.rsplit("-", 1)[0]


class Consumer:
    """Reads from ``queues`` as consumer ``name`` and runs what it reads."""

    def __init__(self, app: StreamQ, queues: list[str], name: str, *, worker_id: str = "",
                 prefetch: int | None = None, block_ms: int | None = None,
                 on_start: Callable[[Delivery, float | None], None] | None = None,
                 timed_out: tuple[str, str, float] | None = None,
                 worker_info: dict[str, Any] | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.broker = app.broker
        self.queues = list(queues)
        self.name = name
        self.worker_id = worker_id or worker_id_of(name)
        self.prefetch = prefetch or self.settings.prefetch
        self.block_ms = self.settings.block_ms if block_ms is None else block_ms
        self._on_start = on_start
        self.executor = Executor(app, name, self.worker_id, on_start=self._started,
                                 on_finish=self._finished)
        self.timed_out = timed_out
        self.worker_info = worker_info
        self.worker_key = keys.worker(self.settings.namespace, self.worker_id) \
            if worker_info is not None else None
        self.stopping = False
        self._lock = threading.Lock()
        self._buffer: deque[Delivery] = deque()
        self._current: Delivery | None = None
        self._running: Delivery | None = None  # _current once its function was called
        self._current_since = 0.0
        self._current_marked = False
        self._batch = Batch()
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._next_reclaim = 0.0
        self.processed = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self, *, housekeeping: bool = True) -> None:
        """Create groups, take back this consumer's own pending entries, start threads."""
        for q in self.queues:
            self.broker.ensure_group(q)
        self._recover_own()
        if housekeeping:
            self._thread = threading.Thread(target=self._housekeeping, daemon=True,
                                            name="streamq-housekeeping")
            self._thread.start()

    def run(self) -> None:
        """Run until ``stopping``; rides out server outages with capped backoff."""
        delay = 0.1
        while not self.stopping:
            try:
                if self._thread is None:
                    self.start()
                self.run_once()
                delay = 0.1
            except BrokerConnectionError as exc:
                log.warning("Server unavailable (%s); retrying in %.1fs.", exc, delay)
                self._halt.wait(delay)
                delay = min(delay * 2, 5.0)
        self.stop()

    def stop(self) -> None:
        """Flush outcomes, hand back unstarted entries, stop the thread."""
        self.stopping = True
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            self.flush()
        except Exception as exc:
            log.warning("Could not write the last outcomes (their messages stay pending and "
                        "will be re-delivered): %s", exc)
        self._release_buffer()

    # -- the loop --------------------------------------------------------------------------
    def run_once(self, now: float | None = None) -> int:
        """One iteration: fetch if nothing is buffered, then run what is buffered."""
        now = time.monotonic() if now is None else now
        with self._lock:
            empty = not self._buffer
        if empty and now >= self._next_reclaim:
            self._next_reclaim = now + max(1.0, self.settings.heartbeat_s)
            self._reclaim()
            with self._lock:
                empty = not self._buffer
        if empty:
            got = self._flush_and_read()
            with self._lock:
                self._buffer.extend(got)
        done = 0
        while not self.stopping:
            with self._lock:
                if not self._buffer:
                    break
                d = self._buffer.popleft()
                self._current, self._current_since = d, time.monotonic()
                self._current_marked = False
            timed_out = None
            if self.timed_out and (d.queue, d.entry_id) == self.timed_out[:2]:
                timed_out, self.timed_out = self.timed_out[2], None
            # The outcome goes to a batch of its own, merged under the lock: the
            # housekeeping thread may flush (swap out) the shared batch meanwhile.
            outcome = Batch()
            self.executor.execute(d, outcome, timed_out=timed_out)
            with self._lock:
                self._current = None
                self._batch.merge(outcome)
                full = self._batch.outcomes >= _FLUSH_SIZE
            done += 1
            if full:
                self.flush()
        # Outcomes still queued here ride with the next read (_flush_and_read): one
        # round trip per batch; a long task's are flushed by the housekeeping thread.
        self.processed += done
        return done

    def _started(self, d: Delivery, timeout: float | None) -> None:
        with self._lock:
            self._running = d
        if self._on_start is not None:
            self._on_start(d, timeout)

    def _flush_and_read(self) -> list[Delivery]:
        """Write pending outcomes and read the next batch in one round trip.

        The read blocks (returning at once when entries are waiting), and the writes
        before it in the same pipeline take effect before it blocks."""
        batch = self._take_batch()
        pipe = Packed()
        flush(self.app, batch, self.name, self.worker_key, pipe=pipe)
        try:
            with self.broker.errors():
                return self.broker.read(self.name, self.queues, self.prefetch, self.block_ms,
                                        pipe=pipe)
        except Exception:
            self._restore_batch(batch)
            raise

    def _finished(self, d: Delivery) -> None:
        with self._lock:
            self._current = self._running = None
        if self._on_start is not None:
            self._on_start(d, None)

    def _take_batch(self) -> Batch:
        with self._lock:
            batch, self._batch = self._batch, Batch()
        return batch

    def _restore_batch(self, batch: Batch) -> None:
        """Put back outcomes whose write failed, to write them again: every write in a
        batch is idempotent or guarded by an ownership check in its script."""
        with self._lock:
            batch.merge(self._batch)
            self._batch = batch

    def flush(self) -> None:
        batch = self._take_batch()
        if not len(batch):
            return
        try:
            flush(self.app, batch, self.name, self.worker_key)
        except Exception:
            self._restore_batch(batch)
            raise

    # -- recovery -----------------------------------------------------------------------------
    def _recover_own(self) -> None:
        """Entries left pending under this consumer name (a replaced process) run first;
        XCLAIM counts this as one more delivery."""
        for q in self.queues:
            got = None
            with self.broker.errors(), self._group_lost(q):
                pending = self.broker.pending_of(q, self.name)
                ids = [_s(p["message_id"]) for p in pending]
                got = self.broker.claim(q, self.name, ids, 0)
            if got:
                log.info("Recovered %d pending message(s) of consumer %s on queue %s.",
                         len(got), self.name, q)
                with self._lock:
                    self._buffer.extend(got)

    @contextlib.contextmanager
    def _group_lost(self, queue: str) -> Iterator[None]:
        """Recreate ``queue``'s group when the server lost it (NOGROUP) instead of
        failing: there is nothing to reclaim from a group that is gone."""
        try:
            yield
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self.broker.recreate_groups([queue])

    def _reclaim(self) -> None:
        """Take over entries nobody is working on:
        - our own orphans: pending for this consumer but not held in memory (a read
          whose reply was lost when the connection dropped), once they missed heartbeats;
        - those of a worker known dead (registration lapsed, heartbeats missed), at once;
        - anything idle longer than ``claim_after_s`` (XAUTOCLAIM), e.g. a dead host."""
        hb_ms = int(self.settings.heartbeat_s * 1000)
        with self.broker.errors():
            live = self._live_workers()
            held = self._held()
            for q in self.queues:
                got = None
                with self._group_lost(q):
                    got = self._claim_orphans(q, set(held.get(q, ())), 2 * hb_ms)
                    got += self._claim_dead_workers(q, live, 3 * hb_ms)
                    got += self.broker.autoclaim(q, self.name, int(
                        self.settings.claim_after_s * 1000), self.prefetch)
                if got:
                    log.warning("Reclaimed %d message(s) on queue %s from dead consumers.",
                                len(got), q)
                    with self._lock:
                        self._buffer.extend(got)

    def _claim_orphans(self, queue: str, held: set[str], min_idle_ms: int) -> list[Delivery]:
        stream = keys.stream(self.settings.namespace, queue)
        stale = self.broker.client.xpending_range(stream, keys.GROUP, "-", "+", self.prefetch,
                                                  consumername=self.name, idle=min_idle_ms)
        ids = [i for i in (_s(p["message_id"]) for p in stale) if i not in held]
        return self.broker.claim(queue, self.name, ids, min_idle_ms)

    def _live_workers(self) -> set[str]:
        cutoff = now_ms() - 3 * int(self.settings.heartbeat_s * 1000)
        ids = self.broker.client.zrangebyscore(keys.workers(self.settings.namespace), cutoff,
                                               "+inf")
        return {_s(i) for i in ids} | {self.worker_id}

    def _claim_dead_workers(self, queue: str, live: set[str], min_idle_ms: int
                            ) -> list[Delivery]:
        stream = keys.stream(self.settings.namespace, queue)
        client = self.broker.client
        out: list[Delivery] = []
        for c in client.xinfo_consumers(stream, keys.GROUP):
            name = _s(c["name"])
            if worker_id_of(name) in live:
                continue
            if int(c.get("pending", 0)) == 0:
                if int(c.get("idle", 0)) > min_idle_ms:
                    client.xgroup_delconsumer(stream, keys.GROUP, name)
                continue
            room = self.prefetch - len(out)
            if room <= 0:
                break
            stale = client.xpending_range(stream, keys.GROUP, "-", "+", room,
                                          consumername=name, idle=min_idle_ms)
            ids = [_s(p["message_id"]) for p in stale]
            out += self.broker.claim(queue, self.name, ids, min_idle_ms)
        return out

    # -- housekeeping thread --------------------------------------------------------------------
    def _housekeeping(self) -> None:
        next_hb = next_promote = 0.0
        while not self._halt.wait(_TICK_S):
            try:
                now = time.monotonic()
                self._release_if_stuck(now)
                self._mark_started(now)
                with self._lock:
                    stale = len(self._batch) and now - self._batch.first_at >= 2 * _FLUSH_AGE_S \
                        and self._current is not None
                if stale:
                    self.flush()
                if now >= next_promote:
                    next_promote = now + self.settings.promote_interval_s
                    for q in self.queues:
                        self.broker.promote(q, now_ms())
                if now >= next_hb:
                    next_hb = now + self.settings.heartbeat_s
                    self._heartbeat()
            except Exception as exc:  # keep the thread alive through server blips
                log.warning("Housekeeping failed (will retry): %s", exc)
                self._halt.wait(0.5)

    def _held(self) -> dict[str, list[str]]:
        with self._lock:
            held = self._batch.held_ids()
            for d in ([self._current] if self._current else []) + list(self._buffer):
                held.setdefault(d.queue, []).append(d.entry_id)
        return held

    def _heartbeat(self) -> None:
        for q, ids in self._held().items():
            lost = set(self.broker.heartbeat(q, self.name, ids)) if ids else set()
            if lost:
                log.warning("%d message(s) on queue %s were reclaimed by another worker; "
                            "this process will not run them.", len(lost), q)
                with self._lock:
                    self._buffer = deque(d for d in self._buffer
                                         if not (d.queue == q and d.entry_id in lost))
        if self.worker_info is not None and self.worker_key is not None:
            pipe = self.broker.client.pipeline(transaction=False)
            info = dict(self.worker_info, last_heartbeat_ms=now_ms())
            pipe.hset(self.worker_key, mapping=info)
            # Kept for the hour a dead worker stays listed by `streamq status`.
            pipe.expire(self.worker_key, 3600)
            pipe.zadd(keys.workers(self.settings.namespace), {self.worker_id: now_ms()})
            pipe.execute()

    def _release_if_stuck(self, now: float) -> None:
        with self._lock:
            if self._current is None or not self._buffer or \
                    now - self._current_since < self.settings.release_after_s:
                return
            items = list(self._buffer)
            self._buffer.clear()
        self._release(items)

    def _release_buffer(self) -> None:
        with self._lock:
            items = list(self._buffer)
            self._buffer.clear()
        if items:
            try:
                self._release(items)
            except Exception as exc:
                log.warning("Could not hand back %d unstarted message(s) (they stay pending "
                            "and will be reclaimed): %s", len(items), exc)

    def _release(self, items: list[Delivery]) -> None:
        by_queue: dict[str, list[tuple[str, bytes]]] = {}
        for d in items:
            if d.raw is not None:
                by_queue.setdefault(d.queue, []).append((d.entry_id, d.raw))
        for q, pairs in by_queue.items():
            n = self.broker.release(q, self.name, pairs)
            log.info("Handed back %d prefetched message(s) on queue %s.", n, q)

    def _mark_started(self, now: float) -> None:
        # Holding the lock while writing means the final record (queued after the
        # main thread clears _current) can never be overwritten by STARTED.
        with self._lock:
            d = self._running
            if d is None or self._current_marked or now - self._current_since < _STARTED_AFTER_S:
                return
            self._current_marked = True
            try:
                task_id = Message.decode(d.raw or b"").id
            except Exception:
                return
            pipe = self.broker.client.pipeline(transaction=False)
            results.write(pipe, self.settings.namespace, task_id,
                          {"status": results.STARTED, "worker": self.name,
                           "deliveries": d.deliveries}, self.settings.result_ttl)
            pipe.execute()

