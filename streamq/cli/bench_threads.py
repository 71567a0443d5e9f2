"""The ``io``, ``sleep`` and quiet-noop rows of ``streamq bench``: many tasks a process.

``io``: ``IO_TASKS`` tasks (at most ``-n``) that each make one blocking round trip of
their own to the server (an INCR on the task's own client), drained by a worker of ``-c`` processes
with ``--threads 1`` and then with the default threads; the row is the second drain
next to the first (ratio target: 5).

``sleep_threads``: ``SLEEP_TASKS`` tasks that sleep ``SLEEP_S`` on a worker of
``SLEEP_PROCESSES`` processes of ``SLEEP_SLOTS`` threads, next to the limit that
concurrency sets (processes x threads / ``SLEEP_S``; target 0.80); ``sleep_async``
the same with ``async def`` tasks awaiting ``asyncio.sleep`` and
``--async-concurrency SLEEP_SLOTS``.

``noop_ignore_result``: ``-n`` noops with ``ignore_result=True`` drained by a
worker of ``-c`` processes, next to the same drain of noops that keep their records.

Each drain is timed from the ``map()`` that enqueues its tasks to the last success
(every process has read its queue before: a warm-up round).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

from ..api.app import StreamQ
from ..base.settings import Settings
from ..server.ceiling import Ceiling
from . import bench_procs as bp
from . import bench_tasks

IO_TASKS = 4000
SLEEP_TASKS = 2000
SLEEP_S = 0.05
SLEEP_PROCESSES = 2
SLEEP_SLOTS = 16
READY_TIMEOUT_S = 60.0
NOOP_QUEUE = "bench-noop-quiet"


def _drain(app: StreamQ, r: Ceiling, url: str, ns: str, clock: bp.Clock,
           procs: list[subprocess.Popen[bytes]], task: Any, calls: list[tuple[Any, ...]],
           processes: int, slots: int, flag: str = "--threads",
           warmup: Any = None) -> float:
    """Tasks/s of one worker of ``processes`` x ``slots`` (threads, or coroutines with
    ``flag="--async-concurrency"``) draining ``calls``."""
    queue = task.options.queue
    proc = bp.start_worker(url, ns, processes, procs, queue, flag, str(slots))
    end = time.monotonic() + READY_TIMEOUT_S
    while r.readers(ns, queue) < processes:  # warm-up: every process has read
        bp.check_alive(proc)
        clock.check()
        if time.monotonic() > end:
            raise bp.BenchError(f"the {processes} processes of a worker did not all take "
                                f"a task within {READY_TIMEOUT_S:g}s")
        for h in (warmup or task).map([calls[0]] * processes * slots):
            h.get(timeout=READY_TIMEOUT_S)
    minute0 = int(time.time() // 60)
    before = r.succeeded(ns, queue, minute0)
    t0 = time.perf_counter()
    task.map(calls)
    while r.succeeded(ns, queue, minute0) - before < len(calls):
        bp.check_alive(proc)
        clock.check()
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    bp.stop(proc)
    return round(len(calls) / elapsed, 1)


def measure(app: StreamQ, r: Ceiling, url: str, ns: str, n: int, concurrency: int,
            clock: bp.Clock, say: Callable[[str], None], procs: list[subprocess.Popen[bytes]]
            ) -> tuple[dict[str, float], dict[str, Any]]:
    """The rows' values and ceilings, and details."""
    io = app.task(name=bench_tasks.IO_NAME, queue=bench_tasks.io.options.queue)(
        bench_tasks.io.fn)
    sleep = app.task(name=bench_tasks.THREAD_SLEEP_NAME,
                     queue=bench_tasks.thread_sleep.options.queue)(bench_tasks.thread_sleep.fn)
    asleep = app.task(name=bench_tasks.ASYNC_SLEEP_NAME,
                      queue=bench_tasks.async_sleep.options.queue)(bench_tasks.async_sleep.fn)
    default = Settings().threads
    io_calls: list[tuple[Any, ...]] = [(f"k{i % 64}",) for i in range(min(IO_TASKS, n))]
    clock.phase = "io"
    say(f"io: {len(io_calls)} tasks each making one round trip, -c {concurrency} --threads 1")
    one = _drain(app, r, url, ns, clock, procs, io, io_calls, concurrency, 1)
    say(f"io: the same with the default --threads {default}")
    many = _drain(app, r, url, ns, clock, procs, io, io_calls, concurrency, default)
    clock.phase = "sleep"
    say(f"sleep: {SLEEP_TASKS} tasks of {SLEEP_S:g} s, -c {SLEEP_PROCESSES} "
        f"--threads {SLEEP_SLOTS}")
    calls = [(SLEEP_S,)] * SLEEP_TASKS
    slept = _drain(app, r, url, ns, clock, procs, sleep, calls, SLEEP_PROCESSES, SLEEP_SLOTS)
    say(f"sleep: the same as async def tasks, --async-concurrency {SLEEP_SLOTS}")
    awaited = _drain(app, r, url, ns, clock, procs, asleep, calls, SLEEP_PROCESSES,
                     SLEEP_SLOTS, "--async-concurrency")
    clock.phase = "noop drain without records"
    noop = app.task(name=bench_tasks.NOOP_NAME, queue=NOOP_QUEUE)(bench_tasks.noop.fn)
    quiet = app.task(name=bench_tasks.NOOP_NAME, queue=NOOP_QUEUE, ignore_result=True)(
        bench_tasks.noop.fn)
    noops: list[tuple[Any, ...]] = [("",)] * n
    say(f"noop drain: {n} noops with records, then with ignore_result=True")
    recorded = _drain(app, r, url, ns, clock, procs, noop, noops, concurrency, 1)
    unrecorded = _drain(app, r, url, ns, clock, procs, quiet, noops, concurrency, 1,
                        warmup=noop)
    out = {"noop_ignore_result": unrecorded, "noop_recorded": recorded,
           "io": many, "io_one_thread": one, "sleep_threads": slept, "sleep_async": awaited,
           "sleep_limit": round(SLEEP_PROCESSES * SLEEP_SLOTS / SLEEP_S, 1)}
    return out, {"io_tasks": len(io_calls), "io_default_threads": default,
                 "sleep_tasks": SLEEP_TASKS, "sleep_processes": SLEEP_PROCESSES,
                 "sleep_slots": SLEEP_SLOTS}
