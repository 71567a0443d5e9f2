"""The ``spread`` row of ``streamq bench``: do more processes run slow tasks faster?

Tasks that wait (an HTTP call, a database) must spread over every free process at
once, whatever ``--prefetch`` says. A worker of ``PROCESSES`` processes reads the
``bench-spread`` queue; once every process has run a warm-up task, ``TASKS`` tasks
that sleep ``TASK_S`` are enqueued with one ``map()``, timed from then to the last
success. The ideal is ``PROCESSES / TASK_S`` tasks/s (every process busy all along).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

from ..api.app import StreamQ
from ..server.ceiling import Ceiling
from . import bench_procs as bp
from . import bench_tasks

PROCESSES = 8
TASK_S = 0.1
TASKS = 160
READY_TIMEOUT_S = 60.0
WARMUP_TASK_S = 0.05


def measure(app: StreamQ, r: Ceiling, url: str, ns: str, clock: bp.Clock,
            say: Callable[[str], None], procs: list[subprocess.Popen[bytes]]
            ) -> tuple[float, float, dict[str, Any]]:
    """Returns (tasks/s, the ideal tasks/s, details)."""
    queue = bench_tasks.sleep.options.queue
    sleep = app.task(name=bench_tasks.SLEEP_NAME, queue=queue)(bench_tasks.sleep.fn)
    say(f"spread: {TASKS} tasks of {TASK_S:g} s on a worker of {PROCESSES} processes "
        f"(default --prefetch)")
    clock.phase = "spread"
    proc = bp.start_worker(url, ns, PROCESSES, procs, queue)
    # Warm-up rounds until every process has taken a task (a consumer is listed from
    # its first delivery on Redis 7.0, from its first read on later servers).
    end = time.monotonic() + READY_TIMEOUT_S
    while r.readers(ns, queue) < PROCESSES:
        bp.check_alive(proc)
        clock.check()
        if time.monotonic() > end:
            raise bp.BenchError(f"the {PROCESSES} processes of the spread worker did not "
                                f"all take a task within {READY_TIMEOUT_S:g}s")
        for h in sleep.map([(WARMUP_TASK_S,)] * PROCESSES):
            h.get(timeout=READY_TIMEOUT_S)
    minute0 = int(time.time() // 60)
    before = r.succeeded(ns, queue, minute0)
    t0 = time.perf_counter()
    sleep.map([(TASK_S,)] * TASKS)
    while (done := r.succeeded(ns, queue, minute0) - before) < TASKS:
        bp.check_alive(proc)
        clock.check()
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    bp.stop(proc)
    return (round(done / elapsed, 1), round(PROCESSES / TASK_S, 1),
            {"spread_timed_s": round(elapsed, 3), "spread_tasks": TASKS,
             "spread_processes": PROCESSES, "spread_task_s": TASK_S})
