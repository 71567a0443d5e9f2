"""Tasks in threads: one worker process runs up to ``threads`` tasks at once.

The loop stays the consumer's. It hands each buffered entry to a free thread, and
reads again once its buffer is empty: as many entries as there are free threads, or
about 50 ms of work when the tasks are that short (``batching.py``), never more than
the prefetch. An entry that waits in the buffer while every thread is busy is handed
back by housekeeping after ``release_after_s``, as with one thread. Outcomes from all
threads leave with the next read, in one round trip; housekeeping writes those that
wait behind long tasks.

While tasks run, reads do not block: the loop waits on its threads instead (a task
that finishes wakes it) and looks for new work every ``IDLE_POLL_S``.

An entry delivered before (``deliveries > 1``) may be what killed this process's
predecessor: it runs alone, once every thread is idle, so that if it kills this
process too, it is the only one charged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..data.outcome import Outcome
from .aio import AsyncTasks
from .executor import Call
from .held import Running

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05
"""While tasks run and the queues were empty: how often the loop looks again."""


class Threads:
    """The task threads of one consumer, and the loop that feeds them."""

    def __init__(self, consumer: Consumer, n: int) -> None:
        self.c = consumer
        self.n = n
        self.held = consumer.held
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="streamq-task")
        self.finished = 0
        self.in_threads = 0
        self.aio: AsyncTasks | None = None
        """The event loop of ``async def`` tasks, started with the first of them."""
        mine = [t for t in consumer.app.registry.values()
                if t.options.queue in consumer.queues]
        self.async_share = 1.0 if mine and all(t.is_async for t in mine) else 0.0
        """About how many of the calls read are async (learnt as they come): reads
        count free coroutine slots by it, so that a worker of mixed tasks does not
        read for its hundred coroutine slots what only its threads can run."""

    def free(self) -> int:
        """Free task threads."""
        return self.n - self.in_threads

    def free_async(self) -> int:
        """Coroutines that may start now (``async_concurrency`` while none runs)."""
        aio = self.aio
        return self.c.settings.async_concurrency - (aio.running if aio else 0)

    def _readable(self) -> int:
        """How many entries to read for: free threads, and free coroutine slots by
        the share of async calls seen."""
        free = self.free()
        if self.c.has_async:
            free += int(self.free_async() * self.async_share)
        return free

    def _any_free(self) -> bool:
        return self.free() > 0 or (self.c.has_async and self.free_async() > 0)

    def run_once(self) -> int:
        """Read when the buffer is empty, start what it holds on free threads, then
        wait for one to be free; returns how many entries were started or decided."""
        c, held = self.c, self.held
        if c.retire_if_due(self.finished, self.wait_idle):
            return 0
        if not held.buffer:
            limit = c.recycling.max_tasks
            if limit and self.finished + len(held.active) >= limit:
                # Every task it may run has started: read no more, and retire once
                # they are done (the next call).
                self._wait(lambda: not held.active, c.block_ms / 1000)
                return 0
            free = self._readable()
            if free <= 0:  # every thread busy, and no coroutine expected: wait for one
                if not c.stopping:
                    self._wait(lambda: self._readable() > 0, c.block_ms / 1000)
                return 0
            busy = bool(held.active)
            count = c.recycling.read_cap(self.finished + len(held.active),
                                         max(free, c.batch.count()))
            got = c._flush_and_read(count, None if busy else c.block_ms)
            held.add(got)
            if not got and busy:
                self._wait(lambda: bool(held.outcomes), IDLE_POLL_S)
        done = 0
        while not c.stopping and self._any_free():
            d = held.pop()
            if d is None:
                break
            done += 1
            if d.deliveries > 1:
                self.wait_idle()  # a suspect runs alone
                c.flush()
                held.make_current(d)
                held.decided(c.handle(d))
                self._count()
                continue
            prepared = c.executor.prepare(d)
            if isinstance(prepared, Call):
                slots = self.free_async if prepared.task.is_async else self.free
                if slots() <= 0:
                    # Its kind has no free slot: back to the buffer's head, where
                    # housekeeping can hand it back, until one frees up.
                    held.push_front(d)
                    done -= 1
                    self._wait(lambda: slots() > 0, c.block_ms / 1000)  # noqa: B023
                    break
                if c.has_async:
                    self.async_share += 0.2 * (prepared.task.is_async - self.async_share)
                self._start(prepared)
            else:
                c._emit(prepared, None)
                held.add_outcome(prepared)
                self._count()
        if held.buffer and not self._any_free() and not c.stopping:
            self._wait(self._any_free, c.block_ms / 1000)  # the buffer waits for a slot
        return done

    def _start(self, call: Call) -> None:
        d, msg, c = call.delivery, call.message, self.c
        is_async = call.task.is_async
        with self.held.lock:
            # An async task is cancelled at its limit, never killed with its process.
            self.held.started(Running(d, "" if msg.ignore_result else msg.id, time.monotonic(),
                                      0.0 if is_async else call.task.options.timeout or 0.0))
            self._publish()
            if is_async:
                if self.aio is None:
                    self.aio = AsyncTasks(c.executor, self._async_done)
                self.aio.running += 1
            else:
                self.in_threads += 1
        if is_async:
            c.emit_started(call)
            assert self.aio is not None
            self.aio.submit(call)
        else:
            self.pool.submit(self._work, call)

    def _async_done(self, call: Call, outcome: Outcome | None, ran: float) -> None:
        assert self.aio is not None
        with self.held.lock:
            self.aio.running -= 1
        self._settle(call, outcome, ran)

    def _work(self, call: Call) -> None:
        c, d = self.c, call.delivery
        outcome: Outcome | None = None
        t0 = time.perf_counter()
        try:
            c.emit_started(call)
            outcome = c.executor.run(call)
        except BaseException:  # the executor turns every error into an outcome
            log.exception("Task thread failed on message %s; it stays pending and will "
                          "be delivered again.", d.entry_id)
            raise
        finally:
            with self.held.lock:
                self.in_threads -= 1
            self._settle(call, outcome, time.perf_counter() - t0)

    def _settle(self, call: Call, outcome: Outcome | None, ran: float) -> None:
        """A task thread's or coroutine's end: hold its outcome and wake the loop."""
        d = call.delivery
        with self.held.lock:
            if outcome is None:  # nothing to write: its entry stays pending
                self.held.active.pop((d.queue, d.entry_id), None)
            else:
                self.held.finished(d, outcome)
                self.finished += 1
            self._publish()
            self.held.changed.notify_all()
        self.c.batch.observe(ran)
        if outcome is not None:
            self.c._emit(outcome, call, ran)

    def _count(self) -> None:
        with self.held.lock:
            self.finished += 1

    def _publish(self) -> None:
        """Tell the supervisor what runs now (held's lock is held)."""
        limits = self.c.limits
        if limits is not None:
            limits.publish([(r.delivery.queue, r.delivery.entry_id, r.since, r.timeout)
                            for r in self.held.active.values()])

    def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        with self.held.changed:
            self.held.changed.wait_for(lambda: ready() or self.c.stopping, timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task runs in a thread; False if ``timeout`` passed first."""
        with self.held.changed:
            return self.held.changed.wait_for(lambda: not self.held.active, timeout)

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        if self.aio is not None:
            self.aio.close()
