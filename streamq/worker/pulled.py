"""Sync tasks in threads, pulled: each task thread takes the next entry from the read
buffer itself, runs it, and holds its outcome; the consumer's loop only reads.

This replaces the hand-off of ``threaded.py`` (the loop passes each entry to a thread
pool and is woken by each finished task) for workers whose queues have no ``async
def`` task. The hand-off cost more than the round trip it overlapped: about five
context switches and 70 us of CPU per task, against one switch and 25 us in one
thread (noop tasks, measured with the processes' CPU times). Here a task costs its
thread two short holds of the lock, and wakes nobody while entries are buffered.

The loop reads when the buffer runs low (fewer entries than threads), so the next
batch is on its way while the threads work through the last entries. A read asks for
the free threads (threads neither busy nor with an entry waiting for them), or about
50 ms of work when the tasks are that short (``batching.py``), never more than the
prefetch. The outcomes of every thread leave with that read, in one round trip;
housekeeping writes those that wait behind long tasks.

An entry delivered before (``deliveries > 1``) may be what killed this process's
predecessor: threads leave it at the buffer's head, and the loop runs it alone once
every thread is idle, so that if it kills this process too, it is the only one charged.
With a memory limit, the thread that finished a task checks the RSS (``recycling.py``);
once the process is to be replaced, threads take no more entries.

Only as many threads run at once as keep one CPU busy (``tune``, every 0.1 s, from the
share of their task time they want a CPU: ``demand.py``): all of them while tasks
wait, one while they compute. At one, the loop runs the tasks itself, exactly as
with ``--threads 1``, and tries two threads for a window every second, to see
whether its tasks wait now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..data.outcome import Delivery
from .demand import Demand
from .executor import Call
from .held import Running

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05
"""While tasks run and the queues were empty: how often the loop looks again."""

TUNE_EVERY_S = 0.1
"""How often the loop weighs the threads' CPU share (``demand.py``) and sets how many
threads may run tasks at once."""
ENOUGH = 0.9
"""The share of one CPU the running threads should want together: as many threads
run as make it so (``ENOUGH / share`` of a task's time spent wanting a CPU), from
one (tasks that compute) to ``--threads`` (tasks that wait)."""
PROBE_EVERY_S = 1.0
"""While its tasks run in the loop (one at a time), how often a process tries two
threads for a window, to see whether its tasks wait now."""
JUDGE_AFTER_S = 0.02
"""Task time below which a window says nothing."""

HELP_AFTER_S = 0.002
"""A thread that takes an entry wakes another one when what is left in the buffer
would keep it busy longer than this (judged by the tasks' run time): a batch of
tasks of microseconds runs in the first thread woken, without the others contending
for the interpreter lock, and tasks that wait are spread over every thread at once."""


class PulledThreads:
    """The task threads of one consumer, which take their entries themselves."""

    def __init__(self, consumer: Consumer, n: int) -> None:
        self.c = consumer
        self.n = n
        self.held = held = consumer.held
        self.work = threading.Condition(held.lock)
        """Task threads wait on it for entries."""
        self.busy = 0
        """Threads running (or preparing) a task; changed under held's lock."""
        self.idle = 0
        """Threads waiting for an entry."""
        self.limit = n
        """How many threads may run tasks at once: all of them while they wait, fewer
        while they compute (``tune``)."""
        self.demand = Demand()
        self._next_tune = 0.0
        self._busy_s = 0.0
        """Seconds the threads spent on tasks since the last ``tune``."""
        self._probe_at = 0.0
        self._want: Callable[[], bool] | None = None
        """What the loop waits for, when it waits: a thread that makes it true wakes it
        (and only then: no wake-up per task)."""
        self._closing = False
        self._alone = False
        """A suspect runs in the loop: no thread starts anything."""
        self._pieces: dict[tuple[str, str], bytes] = {}
        """The running tasks' entries as the supervisor reads them (``limits.py``)."""
        self._timed: dict[tuple[str, str], tuple[float, float, tuple[str, str]]] = {}
        """Of those, the ones with a hard limit: (deadline, timeout, key)."""
        self._memory = bool(consumer.recycling.max_memory_mb)
        self._threads = [threading.Thread(target=self._serve, name=f"streamq-task-{i}",
                                          daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    # -- the loop's side -------------------------------------------------------------
    def _free(self) -> int:
        """Threads that may start a task and have no entry buffered for them."""
        return self.limit - self.busy - len(self.held.buffer)

    def tune(self, now: float) -> None:
        """As many running threads as keep one CPU busy: one while tasks compute (they
        then run in the loop itself, as with ``--threads 1``), all while they wait."""
        self._next_tune = now + TUNE_EVERY_S
        used = self.demand.used()
        with self.work:
            busy_s, self._busy_s = self._busy_s, 0.0
        before = self.limit
        if used is None:
            return
        if before == 1:  # tasks run in the loop: try threads again now and then
            if now >= self._probe_at:
                self.limit = 2
        elif busy_s >= JUDGE_AFTER_S:
            share = used / busy_s
            self.limit = self.n if share <= 0 else max(1, min(self.n, round(ENOUGH / share)))
            if self.limit == 1:
                self._probe_at = now + PROBE_EVERY_S
        if self.limit > before and self.held.buffer:
            with self.work:
                self.work.notify(self.limit - self.busy)
        if self.limit != before:
            log.debug("Task threads: %d of %d run at once (%.1f ms of task time).",
                      self.limit, self.n, busy_s * 1000)

    def _suspect_first(self) -> bool:
        buf = self.held.buffer
        return bool(buf) and buf[0].deliveries > 1

    def _low(self) -> bool:
        """Time to read: fewer buffered entries than threads, one of them free."""
        return len(self.held.buffer) < self.limit and self._free() > 0

    def run_once(self) -> int:
        """Read when the buffer runs low, run a suspect alone, or wait for either;
        returns how many entries were read or decided."""
        c, held = self.c, self.held
        now = time.monotonic()
        if now >= self._next_tune:
            self.tune(now)
        if held.buffer and not self.busy:  # e.g. recovered or reclaimed entries
            with self.work:
                self.work.notify()
        if c.retire_if_due(c.processed, self.wait_idle):
            return 0
        if self.limit == 1 and not self.busy:
            return c.run_here()  # tasks that compute: no thread would help them
        if self._suspect_first():
            return self._run_suspect()
        if not self._low():
            self._wait(lambda: self._low() or self._suspect_first() or
                       self.c.recycled is not None, c.block_ms / 1000)
            return 0
        limit = c.recycling.max_tasks
        started = c.processed + self.busy + len(held.buffer)
        if limit and started >= limit:
            # Every task it may run has been read: retire once they are done.
            self._wait(lambda: not self.busy and not self.held.buffer, c.block_ms / 1000)
            return 0
        busy = bool(self.busy or held.buffer)
        count = c.recycling.read_cap(started, max(self._free(), c.batch.count()))
        got = c._flush_and_read(count, None if busy else c.block_ms)
        held.add(got)
        if got:
            with self.work:
                self.work.notify()  # one thread; it wakes more if the batch needs them
        elif busy:  # nothing waiting: look again soon, or when an outcome is held
            self._wait(lambda: bool(self.held.outcomes) and self._free() > 0, IDLE_POLL_S)
        return len(got)

    def _run_suspect(self) -> int:
        c, held = self.c, self.held
        if not self.wait_idle(c.block_ms / 1000):
            return 0
        with self.work:
            d = held.next()  # the head: no thread takes a suspect
            if d is None:
                return 0
            self._alone = True
        try:
            c.flush()
            held.decided(c.handle(d))
        finally:
            with self.work:
                self._alone = False
                c.processed += 1
                self.work.notify_all()  # whatever follows it may start now
        return 1

    def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        with self.work:
            self._want = lambda: ready() or self.c.stopping
            try:
                self.held.changed.wait_for(self._want, timeout)
            finally:
                self._want = None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task runs in a thread; False if ``timeout`` passed first."""
        with self.work:
            self._want = lambda: not self.busy
            try:
                return self.held.changed.wait_for(self._want, timeout)
            finally:
                self._want = None

    def close(self) -> None:
        with self.work:
            self._closing = True
            self.work.notify_all()
        self.demand.close()

    # -- the task threads' side ------------------------------------------------------
    def _take(self) -> Delivery | None:
        """The next entry for a thread (held's lock is held), or None."""
        buf, c = self.held.buffer, self.c
        if not buf or buf[0].deliveries > 1 or self._alone or self.busy >= self.limit \
                or c.stopping or c.recycled is not None:
            return None
        self.busy += 1
        d = buf.popleft()
        if buf and self.idle and self.busy < self.limit:
            est = c.batch.per_task_s
            if est is None or len(buf) * est > HELP_AFTER_S:
                self.work.notify()
        return d

    def _serve(self) -> None:
        held, c = self.held, self.c
        d: Delivery | None = None
        t0 = 0.0
        with self.work:
            self.demand.watch(threading.get_native_id())
        while True:
            with self.work:
                if d is not None:
                    self.busy -= 1
                    c.processed += 1
                    self._busy_s += time.perf_counter() - t0
                    if self._memory and c.recycled is None:
                        c.recycled = c.recycling.due(c.processed)
                want = self._want
                if want is not None and want():
                    held.changed.notify()
                while (d := self._take()) is None:
                    if self._closing:
                        return
                    self.idle += 1
                    try:
                        self.work.wait()
                    finally:
                        self.idle -= 1
            t0 = time.perf_counter()
            try:
                self._one(d)
            except BaseException:  # the executor turns every error into an outcome
                log.exception("Task thread failed on message %s; it stays pending and "
                              "will be delivered again.", d.entry_id)

    def _one(self, d: Delivery) -> None:
        """Prepare and run one entry; hold its outcome."""
        c, held = self.c, self.held
        prepared = c.executor.prepare(d)
        if not isinstance(prepared, Call):
            c._emit(prepared, None)
            held.add_outcome(prepared)
            return
        msg = prepared.message
        now = time.monotonic()
        timeout = prepared.task.options.timeout or 0.0
        key = (d.queue, d.entry_id)
        with held.lock:
            held.started(Running(d, "" if msg.ignore_result else msg.id, now, timeout))
            self._pieces[key] = f"{d.queue}\n{d.entry_id}".encode()
            if timeout:
                self._timed[key] = (now + timeout, timeout, key)
            self._publish()
        c.emit_started(prepared)
        t0 = time.perf_counter()
        outcome = None
        try:
            outcome = c.executor.run(prepared)
        finally:
            with held.lock:  # as held.finished, without waking the loop
                held.active.pop(key, None)
                del self._pieces[key]
                self._timed.pop(key, None)
                if held.current is d:
                    held.current = next(iter(held.active.values())).delivery \
                        if held.active else None
                if outcome is not None:  # None: nothing to write, its entry stays pending
                    if not held.outcomes:
                        held.outcomes_since = time.monotonic()
                    held.outcomes.append(outcome)
                self._publish()
        ran = time.perf_counter() - t0
        c.batch.observe(ran)
        if outcome is not None:
            c._emit(outcome, prepared, ran)

    def _publish(self) -> None:
        """Tell the supervisor what runs now (held's lock is held): each entry's
        piece is made once, at its start; a deadline comes first."""
        limits = self.c.limits
        if limits is None:
            return
        if not self._timed:
            limits.put(list(self._pieces.values()), 0.0, 0.0)
            return
        deadline, timeout, key = min(self._timed.values())
        first = self._pieces[key]
        limits.put([first, *(p for k, p in self._pieces.items() if k != key)], deadline,
                   timeout)
