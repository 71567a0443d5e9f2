"""``streamq bench``: streamq next to the raw redis-py ceiling, in one run on one server,
so the figures that matter are ratios. Each ceiling is measured interleaved with
its streamq counterpart (enqueue: 5 alternating slices; drain: half the raw drain
before the worker's drain and half after), so both sides see the same machine noise.
Nothing here prints: phases are announced through ``progress``.

Ceilings (``streamq.server.ceiling``: raw redis-py, one connection, this process;
entries carry one field ``m`` of ``payload_bytes`` bytes): ``xadd_single`` XADD,
one round trip each; ``xadd_pipelined`` XADD in pipelines of 100 (which also fills
the stream for the raw drain); ``raw_drain`` XREADGROUP COUNT 100 (one round trip)
then XACK + XDEL of that batch pipelined (one round trip), N entries in all.

streamq, in a fresh namespace ``streamq-bench-<hex>`` deleted at the end:
``delay`` N x ``task.delay()`` (to a queue no worker reads); ``adelay`` N x
``task.adelay()`` from one event loop, ``GATHER`` gathered at a time (the same
queue); ``map`` ``task.map()``
of N calls in all, which the drain then runs; ``drain`` a real
``python -m streamq worker streamq.cli.bench_tasks -c C`` subprocess, timed from the
FIRST STORED RESULT to the last (interpreter and worker start-up excluded; the
tasks done at the first observation are not counted), completion read from the
per-minute stats hashes (``succeeded``, the last write of each outcome pipeline)
every 2 ms until the first result, then every 20 ms; ``roundtrip_p50``/``_p99``
``delay()`` then ``.get()`` one at a time against one idle ``-c 1`` worker after
a warm-up, in ms; ``idle_rss`` VmRSS of that worker's child process after the
round trips, in MB (copy-on-write pages shared with the supervisor count in full).

``spread`` (``bench_spread``): tasks that sleep 0.1 s on a worker of 8 processes, in
tasks/s next to the ideal 8 / 0.1 s (a process per task at once).

``io``, ``sleep_threads``, ``sleep_async`` (``bench_threads``): tasks that wait, run
many at once per process (threads, an event loop).

``durable_everysec``/``durable_always`` (``bench_durable``): ``delay()`` with
``durable=True`` one at a time, the server's appendfsync switched to each policy for
the row and put back after, next to plain ``delay()`` interleaved with it.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import secrets
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ..api.app import StreamQ
from ..base.errors import BrokerError
from ..base.settings import mask_url
from ..server.ceiling import Ceiling
from . import bench_durable, bench_partitions, bench_spread, bench_tasks, bench_threads
from . import bench_procs as bp
from .bench_procs import BenchError, Clock

ROUNDS = 5
ROUNDTRIPS = 1000
ROUNDTRIP_BUDGET_S = 30.0
WARMUP = 20
GATHER = 1000
"""Concurrent ``adelay()`` calls per ``asyncio.gather`` in the ``adelay`` row."""
SINK_QUEUE = "bench-enqueue-only"

# key: (label, unit, ceiling, target): with a ceiling, value/ceiling >= target;
# without one, value < target.
ROWS: dict[str, tuple[str, str, str | None, float]] = {
    "delay": ("delay(), one at a time", "tasks/s", "xadd_single", 0.80),
    "map": ("map(), bulk enqueue", "tasks/s", "xadd_pipelined", 0.50),
    "adelay": ("adelay(), 1,000 gathered at a time", "tasks/s", "xadd_pipelined", 0.50),
    "drain": ("drain: worker runs noops", "tasks/s", "raw_drain", 0.30),
    "spread": (f"spread: {bench_spread.PROCESSES} processes run {bench_spread.TASK_S:g} s tasks",
               "tasks/s", "spread_ideal", 0.90),
    "roundtrip_p50": ("delay()+get() p50", "ms", None, 1.0),
    "roundtrip_p99": ("delay()+get() p99", "ms", None, 5.0),
    "idle_rss": ("idle worker RSS", "MB", None, 60.0),
    # A durable call waits for the server: under always for its fsync (1-4 ms here),
    # under everysec for the next tick of its 10 Hz cron (Valkey 9.1), at most 100 ms.
    "durable_everysec": ("durable delay(), appendfsync everysec", "tasks/s",
                         "delay_beside_durable", 0.001),
    "durable_always": ("durable delay(), appendfsync always", "tasks/s",
                       "delay_beside_durable", 0.02),
}
ROWS.update({
    "noop_ignore_result": ("drain: noops with ignore_result=True", "tasks/s",
                           "noop_recorded", 1.0),
    "io": ("io drain: default --threads", "tasks/s",
           "io_one_thread", 5.0),
    "sleep_threads": (f"sleep drain: {bench_threads.SLEEP_SLOTS} threads x "
                      f"{bench_threads.SLEEP_PROCESSES}", "tasks/s", "sleep_limit", 0.80),
    "sleep_async": (f"sleep drain: async def, {bench_threads.SLEEP_SLOTS} x "
                    f"{bench_threads.SLEEP_PROCESSES}", "tasks/s", "sleep_limit", 0.80),
})
ROWS.update({
    "parts": (f"drain: {bench_partitions.PARTITIONS} partitions, no key", "tasks/s",
              "parts_plain", 0.80),
    "parts_keyed": (f"drain: {bench_partitions.PARTITIONS} partitions, "
                    f"{bench_partitions.KEYS} keys in order", "tasks/s", "parts_plain", 0.25),
})
GROUPS = {"enqueue": ("delay", "map", "adelay"),
          "durable": ("durable_everysec", "durable_always"),
          "drain": ("drain",), "spread": ("spread",),
          "threads": ("noop_ignore_result", "io", "sleep_threads", "sleep_async"),
          "roundtrip": ("roundtrip_p50", "roundtrip_p99", "idle_rss"),
          "partitions": ("parts", "parts_keyed")}
"""The measurements ``--only`` can pick, and the rows each gives."""
TASK_CEILINGS = {"delay_beside_durable", "io_one_thread", "sleep_limit", "noop_recorded",
                 "parts_plain"}
CEILINGS = {"xadd_single": "raw XADD", "xadd_pipelined": "raw XADD pipelined x100",
            "raw_drain": "raw XREADGROUP+XACK+XDEL",
            "spread_ideal": f"ideal: {bench_spread.PROCESSES} / {bench_spread.TASK_S:g} s",
            "delay_beside_durable": "plain delay(), interleaved",
            "noop_recorded": "the same, with records",
            "io_one_thread": "the same, --threads 1",
            "parts_plain": "the same on one plain queue",
            "sleep_limit": f"limit: {bench_threads.SLEEP_SLOTS} x "
                           f"{bench_threads.SLEEP_PROCESSES} / {bench_threads.SLEEP_S:g} s"}


def run_bench(url: str | None, n: int, concurrency: int, payload_bytes: int, *,
              progress: Callable[[str], None] | None = None,
              time_limit_s: float = 300, only: frozenset[str] = frozenset(GROUPS)
              ) -> dict[str, Any]:
    """Run the measurements of the ``only`` groups (``GROUPS``; see the module
    docstring) and return the report dict: ``params``, ``versions``, ``ceilings``,
    ``rows`` (each with ``value``, ``ceiling``, ``ratio`` = value/ceiling, ``target``,
    ``meets_target``), ``details``, ``elapsed_s``."""
    if n < 1 or concurrency < 1 or payload_bytes < 0 or time_limit_s <= 0:
        raise ValueError("n and concurrency must be >= 1, payload_bytes >= 0, time_limit_s > 0")
    if not only or not only <= set(GROUPS):
        raise ValueError(f"only: one or more of {', '.join(GROUPS)}")
    say = progress or (lambda _msg: None)
    clock = Clock(time_limit_s)
    ns = f"streamq-bench-{secrets.token_hex(4)}"
    app = StreamQ(url, namespace=ns)
    t_all = time.perf_counter()
    raw: Ceiling | None = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        resolved = app.server.url
        app.server.info("server")  # the connection check
        raw = Ceiling(resolved)
        versions = _versions(raw)
        say(f"server {versions['server_name']} {versions['server_version']} at "
            f"{mask_url(resolved)}; namespace {ns}")
        measured, details = _measure(app, raw, resolved, ns, n, concurrency,
                                     payload_bytes, clock, say, procs, only)
    finally:
        for proc in procs:
            if not proc.bench_log.closed:  # type: ignore[attr-defined]  # not stopped yet
                bp.stop(proc)
        if raw is not None:
            say("deleting the benchmark's keys")
            try:
                raw.delete_namespace(ns)
            except BrokerError:
                pass  # the server is gone: nothing to clean, and the first error wins
            raw.close()
        app.close()
    ceilings = {k: {"measurement": v, "value": measured[k],
                    "unit": "tasks/s" if k in TASK_CEILINGS else "entries/s"}
                for k, v in CEILINGS.items() if k in measured}
    picked = {key for group in only for key in GROUPS[group]}
    rows = []
    for key, (label, unit, ceiling_key, bound) in ROWS.items():
        if key not in picked:
            continue
        value = measured[key]
        ceiling = measured[ceiling_key] if ceiling_key else None
        # No value: the server could not be durable (details say why).
        ratio = round(value / ceiling, 6) if ceiling and value is not None else None
        rows.append({"key": key, "measurement": label, "value": value, "unit": unit,
                     "ceiling": ceiling, "ceiling_key": ceiling_key,
                     "ceiling_measurement": CEILINGS.get(ceiling_key or ""), "ratio": ratio,
                     "target": f">= {bound:.2f}" if ceiling_key and bound >= 0.01 else
                     f">= {bound:g}" if ceiling_key else f"< {bound:g} {unit}",
                     "meets_target": ratio >= bound if ratio is not None else
                     value is not None and ceiling_key is None and value < bound})
    return {
        "params": {"url": mask_url(resolved), "n": n, "concurrency": concurrency,
                   "payload_bytes": payload_bytes, "namespace": ns,
                   "time_limit_s": time_limit_s,
                   "only": [g for g in GROUPS if g in only]},
        "versions": versions, "ceilings": ceilings, "rows": rows, "details": details,
        "elapsed_s": round(time.perf_counter() - t_all, 3),
    }


# -- measurements ------------------------------------------------------------------------------
def _timed(clock: Clock, phase: str, steps: int, step: Callable[[], Any]) -> float:
    """Seconds taken by ``steps`` calls of ``step()``."""
    clock.phase = phase
    t0 = time.perf_counter()
    for i in range(steps):
        step()
        if not i & 63:
            clock.check()
    return time.perf_counter() - t0


async def _gathered(app: StreamQ, task: Any, size: int, args: tuple[Any, ...]) -> None:
    """``size`` calls of ``task.adelay()``, ``GATHER`` at a time, on this event loop."""
    try:
        for start in range(0, size, GATHER):
            await asyncio.gather(*(task.adelay(*args)
                                   for _ in range(min(GATHER, size - start))))
    finally:
        await app.aclose()


def _raw_drain(r: Ceiling, stream: str, count: int, clock: Clock) -> float:
    """Seconds to read, ack and delete ``count`` entries of ``stream`` in batches."""
    clock.phase = "raw drain"
    return r.drain(stream, count, clock.check)


def _measure(app: StreamQ, r: Ceiling, url: str, ns: str, n: int, concurrency: int,
             payload_bytes: int, clock: Clock, say: Callable[[str], None],
             procs: list[subprocess.Popen[bytes]], only: frozenset[str]
             ) -> tuple[dict[str, float | None], dict[str, Any]]:
    fn, queue = bench_tasks.noop.fn, bench_tasks.noop.options.queue
    noop = app.task(name=bench_tasks.NOOP_NAME, queue=queue)(fn)
    sink = app.task(name="streamq.bench.enqueue_only", queue=SINK_QUEUE)(fn)
    args: tuple[Any, ...] = ("x" * payload_bytes,) if payload_bytes else ()
    out: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    if "enqueue" in only:
        _enqueue(app, r, n, args, sink, noop, clock, say, out, ns)
    if "durable" in only:
        durable, more = bench_durable.measure(app, sink, url, ns, n, args, clock, say)
        out.update(durable)
        details.update(more)
    if "drain" in only:
        # The enqueue measurement's map() and pipelined XADDs leave what the drains run.
        _drain(r, url, ns, n, concurrency, queue, noop, args, clock, say, procs, out, details,
               filled="enqueue" in only)
    if "spread" in only:
        out["spread"], out["spread_ideal"], more = bench_spread.measure(
            app, r, url, ns, clock, say, procs)
        details.update(more)
    if "threads" in only:
        threaded, more = bench_threads.measure(app, r, url, ns, n, concurrency, clock, say,
                                               procs)
        out.update(threaded)
        details.update(more)
    if "partitions" in only:
        parted, more = bench_partitions.measure(app, r, url, ns, n, concurrency, clock, say,
                                                procs)
        out.update(parted)
        details.update(more)
    if "roundtrip" in only:
        _roundtrips(url, ns, n, queue, noop, args, clock, say, procs, out, details, r)
    return out, details


def _enqueue(app: StreamQ, r: Ceiling, n: int, args: tuple[Any, ...], sink: Any, noop: Any,
             clock: Clock, say: Callable[[str], None], out: dict[str, float | None],
             ns: str) -> None:
    single, stream = f"{ns}:raw:single", f"{ns}:raw:stream"
    fields = {"m": b"x" * len(args[0] if args else "")}
    say(f"enqueue: raw XADD, delay(), raw pipelined XADD, map(): {ROUNDS} alternating "
        f"slices of {n} in all")
    secs = dict.fromkeys(("xadd_single", "delay", "xadd_pipelined", "map", "adelay"), 0.0)
    for size in [n // ROUNDS + (i < n % ROUNDS) for i in range(ROUNDS)]:
        if size:
            clock.phase = "raw XADD"
            secs["xadd_single"] += r.xadd_single(single, fields, size, clock.check)
            secs["delay"] += _timed(clock, "delay()", size, lambda: sink.delay(*args))
            secs["adelay"] += _timed(clock, "adelay()", 1, lambda: asyncio.run(
                _gathered(app, sink, size, args)))  # noqa: B023 - runs in this iteration
            clock.phase = "raw pipelined XADD"
            secs["xadd_pipelined"] += r.xadd_pipelined(stream, fields, size, clock.check)
            # The lambda runs within this iteration, so it sees this slice's size.
            secs["map"] += _timed(clock, "map()", 1,
                                  lambda: noop.map([args] * size))  # noqa: B023
    r.delete(single)
    out.update({k: round(n / v, 1) for k, v in secs.items()})


def _drain(r: Ceiling, url: str, ns: str, n: int, concurrency: int, queue: str, noop: Any,
           args: tuple[Any, ...], clock: Clock, say: Callable[[str], None],
           procs: list[subprocess.Popen[bytes]], out: dict[str, float | None],
           details: dict[str, Any], *, filled: bool) -> None:
    stream, fields = f"{ns}:raw:stream", {"m": b"x" * len(args[0] if args else "")}
    if not filled:
        noop.map([args] * n)
        r.xadd_pipelined(stream, fields, n, clock.check)
    say(f"drain: raw drain of {n // 2}, a worker with {concurrency} process(es) drains "
        f"{n} tasks, raw drain of {n - n // 2}")
    r.create_group(stream)
    raw_s = _raw_drain(r, stream, n // 2, clock)
    clock.phase = "drain"
    minute0 = int(time.time() // 60)
    t_spawn = t_prev = t_progress = time.perf_counter()
    proc = bp.start_worker(url, ns, concurrency, procs, queue)
    first: tuple[float, int] | None = None
    last, gap = 0, 0.0
    while True:
        done = r.succeeded(ns, queue, minute0)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done) if done < n else (t_prev, 0)  # all done between two polls
        if done != last:
            last, t_progress = done, now
        gap = max(gap, now - t_progress) if first else 0.0
        if done >= n:
            break
        bp.check_alive(proc)
        clock.check()
        t_prev = now
        time.sleep(0.02 if first else 0.002)
    assert first is not None
    out["drain"] = round((n - first[1]) / max(now - first[0], 1e-6), 1)
    details.update({
        "drain_first_result_s": round(first[0] - t_spawn, 3),
        "drain_counted_tasks": n - first[1], "drain_timed_s": round(now - first[0], 4),
        "drain_longest_stall_s": round(gap, 3)})
    bp.stop(proc)
    raw_s += _raw_drain(r, stream, n - n // 2, clock)
    out["raw_drain"] = round(n / raw_s, 1)
    r.delete(stream)


def _roundtrips(url: str, ns: str, n: int, queue: str, noop: Any, args: tuple[Any, ...],
                clock: Clock, say: Callable[[str], None],
                procs: list[subprocess.Popen[bytes]], out: dict[str, float | None],
                details: dict[str, Any], r: Ceiling) -> None:
    say("streamq: round trips against one idle -c 1 worker")
    clock.phase = "round trips"
    proc = bp.start_worker(url, ns, 1, procs, queue)
    bp.wait_registered(r, ns, proc, clock)
    for _ in range(WARMUP):
        noop.delay(*args).get(timeout=10)
    samples: list[float] = []
    budget = time.monotonic() + ROUNDTRIP_BUDGET_S
    while len(samples) < min(ROUNDTRIPS, n) and time.monotonic() < budget:
        t0 = time.perf_counter()
        noop.delay(*args).get(timeout=10)
        samples.append((time.perf_counter() - t0) * 1000)
        clock.check()
    samples.sort()
    out["roundtrip_p50"] = round(_percentile(samples, 0.50), 3)
    out["roundtrip_p99"] = round(_percentile(samples, 0.99), 3)
    details.update(roundtrip_samples=len(samples),
                   roundtrip_mean_ms=round(sum(samples) / len(samples), 3),
                   roundtrip_max_ms=round(samples[-1], 3))

    clock.phase = "idle RSS"
    time.sleep(0.5)
    rss = [bp.rss_mb(pid) for pid in bp.children(proc.pid)]
    if not rss:
        raise BenchError("the -c 1 worker has no child process to measure")
    out["idle_rss"] = round(max(rss), 1)
    details.update(idle_rss_children_mb=[round(x, 1) for x in rss],
                   idle_rss_supervisor_mb=round(bp.rss_mb(proc.pid), 1))
    bp.stop(proc)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, min(len(sorted_values) - 1,
                                    math.ceil(q * len(sorted_values)) - 1))]


# -- the rest ------------------------------------------------------------------------------------
def _versions(r: Ceiling) -> dict[str, Any]:
    return {"python": platform.python_version(), "streamq": metadata.version("streamq"),
            **r.versions(), "cpus": os.cpu_count()}
