"""The ``partitions`` rows of ``streamq bench``: a partitioned queue's drain.

Three drains of N noop tasks by one worker of ``-c`` processes, each timed from the
worker's first success to the last: a plain queue (the ceiling of the other two),
the ``bench-parts`` queue of ``PARTITIONS`` partitions fed without keys (calls spread
over the partitions in turn), and the same queue fed with ``KEYS`` partition keys
(calls of one key one at a time, in enqueue order: one gate round trip per task).
On a cluster the partitions sit on every node; on one server they share it, so the
rows show what partitioning and ordering cost, not what separate hosts would add.
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

PARTITIONS = bench_tasks.PARTITIONS
KEYS = 20


def measure(app: StreamQ, r: Ceiling, url: str, ns: str, n: int, concurrency: int,
            clock: bp.Clock, say: Callable[[str], None],
            procs: list[subprocess.Popen[bytes]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Returns the rows (tasks/s) and details."""
    plain_queue = "bench-parts-plain"
    plain = app.task(name=bench_tasks.NOOP_NAME, queue=plain_queue)(bench_tasks.noop.fn)
    names = app.queue(bench_tasks.PARTS_QUEUE, partitions=PARTITIONS)
    parted = app.task(name=bench_tasks.NOOP_NAME + "_parts",
                      queue=bench_tasks.PARTS_QUEUE)(bench_tasks.noop_parts.fn)
    say(f"partitions: drains of {n} noops by {concurrency} process(es): a plain queue, "
        f"{PARTITIONS} partitions, {PARTITIONS} partitions with {KEYS} keys in order")
    out: dict[str, float] = {}
    details: dict[str, Any] = {}
    clock.phase = "partitions: plain"
    plain.map([()] * n)
    out["parts_plain"], details["parts_plain_s"] = _drain(
        r, url, ns, n, concurrency, plain_queue, (plain_queue,), clock, procs)
    clock.phase = "partitions: spread"
    parted.map([()] * n)
    out["parts"], details["parts_s"] = _drain(
        r, url, ns, n, concurrency, bench_tasks.PARTS_QUEUE, names, clock, procs)
    clock.phase = "partitions: keyed"
    for i in range(n):
        parted.apply_async((), partition_key=f"key-{i % KEYS}")
        if not i & 255:
            clock.check()
    out["parts_keyed"], details["parts_keyed_s"] = _drain(
        r, url, ns, 2 * n, concurrency, bench_tasks.PARTS_QUEUE, names, clock, procs,
        before=n)
    return out, details


def _drain(r: Ceiling, url: str, ns: str, n: int, concurrency: int, queue: str,
           counted: tuple[str, ...], clock: bp.Clock, procs: list[subprocess.Popen[bytes]],
           *, before: int = 0) -> tuple[float, float]:
    """Tasks/s of a worker on ``queue`` from its first success until ``n`` of the
    queues ``counted`` have succeeded (``before`` of them already had), and seconds."""
    minute0 = int(time.time() // 60) - 1
    proc = bp.start_worker(url, ns, concurrency, procs, queue)
    first: tuple[float, int] | None = None
    while True:
        done = sum(r.succeeded(ns, q, minute0) for q in counted)
        now = time.perf_counter()
        if done > before and first is None:
            first = (now, done)
        if done >= n:
            break
        bp.check_alive(proc)
        clock.check()
        time.sleep(0.01)
    bp.stop(proc)
    assert first is not None
    elapsed = max(now - first[0], 1e-6)
    return round((n - first[1]) / elapsed, 1), round(elapsed, 3)
