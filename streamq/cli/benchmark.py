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
``delay`` N x ``task.delay()`` (to a queue no worker reads); ``map`` ``task.map()``
of N calls in all, which the drain then runs; ``drain`` a real
``python -m streamq worker streamq.cli.bench_tasks -c C`` subprocess, timed from the
FIRST STORED RESULT to the last (interpreter and worker start-up excluded; the
tasks done at the first observation are not counted), completion read from the
per-minute stats hashes (``succeeded``, the last write of each outcome pipeline)
every 2 ms until the first result, then every 20 ms; ``roundtrip_p50``/``_p99``
``delay()`` then ``.get()`` one at a time against one idle ``-c 1`` worker after
a warm-up, in ms; ``idle_rss`` VmRSS of that worker's child process after the
round trips, in MB (copy-on-write pages shared with the supervisor count in full).

Subprocesses get their own session and are stopped by PID: SIGTERM, then SIGKILL
of their process group after a timeout, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import IO, Any
from urllib.parse import urlsplit

from ..api.app import StreamQ
from ..base.errors import BrokerError, StreamQError
from ..base.settings import mask_url
from ..server.ceiling import Ceiling
from . import bench_tasks

ROUNDS = 5
ROUNDTRIPS = 1000
ROUNDTRIP_BUDGET_S = 30.0
WARMUP = 20
STOP_TIMEOUT_S = 15.0
SINK_QUEUE = "bench-enqueue-only"

# key: (label, unit, ceiling, target): with a ceiling, value/ceiling >= target;
# without one, value < target.
ROWS: dict[str, tuple[str, str, str | None, float]] = {
    "delay": ("delay(), one at a time", "tasks/s", "xadd_single", 0.80),
    "map": ("map(), bulk enqueue", "tasks/s", "xadd_pipelined", 0.50),
    "drain": ("drain: worker runs noops", "tasks/s", "raw_drain", 0.30),
    "roundtrip_p50": ("delay()+get() p50", "ms", None, 1.0),
    "roundtrip_p99": ("delay()+get() p99", "ms", None, 5.0),
    "idle_rss": ("idle worker RSS", "MB", None, 60.0),
}
CEILINGS = {"xadd_single": "raw XADD", "xadd_pipelined": "raw XADD pipelined x100",
            "raw_drain": "raw XREADGROUP+XACK+XDEL"}


class BenchError(StreamQError):
    """The benchmark could not finish (time limit, a worker that died, ...)."""


class _Clock:
    def __init__(self, limit_s: float) -> None:
        self.limit_s, self.end, self.phase = limit_s, time.monotonic() + limit_s, "start-up"

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"the benchmark exceeded its time limit of {self.limit_s:g}s "
                             f"(during {self.phase})")


def run_bench(url: str | None, n: int, concurrency: int, payload_bytes: int, *,
              progress: Callable[[str], None] | None = None,
              time_limit_s: float = 300) -> dict[str, Any]:
    """Run every measurement (see the module docstring) and return the report dict:
    ``params``, ``versions``, ``ceilings``, ``rows`` (each with ``value``, ``ceiling``,
    ``ratio`` = value/ceiling, ``target``, ``meets_target``), ``details``, ``elapsed_s``."""
    if n < 1 or concurrency < 1 or payload_bytes < 0 or time_limit_s <= 0:
        raise ValueError("n and concurrency must be >= 1, payload_bytes >= 0, time_limit_s > 0")
    say = progress or (lambda _msg: None)
    clock = _Clock(time_limit_s)
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
                                     payload_bytes, clock, say, procs)
    finally:
        for proc in procs:
            if not proc.bench_log.closed:  # type: ignore[attr-defined]  # not stopped yet
                _stop(proc)
        if raw is not None:
            say("deleting the benchmark's keys")
            try:
                raw.delete_namespace(ns)
            except BrokerError:
                pass  # the server is gone: nothing to clean, and the first error wins
            raw.close()
        app.close()
    ceilings = {k: {"measurement": v, "value": measured[k], "unit": "entries/s"}
                for k, v in CEILINGS.items()}
    rows = []
    for key, (label, unit, ceiling_key, bound) in ROWS.items():
        value = measured[key]
        ceiling = measured[ceiling_key] if ceiling_key else None
        ratio = round(value / ceiling, 4) if ceiling else None
        rows.append({"key": key, "measurement": label, "value": value, "unit": unit,
                     "ceiling": ceiling, "ceiling_key": ceiling_key,
                     "ceiling_measurement": CEILINGS.get(ceiling_key or ""), "ratio": ratio,
                     "target": f">= {bound:.2f}" if ceiling_key else f"< {bound:g} {unit}",
                     "meets_target": ratio >= bound if ratio is not None else value < bound})
    return {
        "params": {"url": mask_url(resolved), "n": n, "concurrency": concurrency,
                   "payload_bytes": payload_bytes, "namespace": ns,
                   "time_limit_s": time_limit_s},
        "versions": versions, "ceilings": ceilings, "rows": rows, "details": details,
        "elapsed_s": round(time.perf_counter() - t_all, 3),
    }


# -- measurements ------------------------------------------------------------------------------
def _timed(clock: _Clock, phase: str, steps: int, step: Callable[[], Any]) -> float:
    """Seconds taken by ``steps`` calls of ``step()``."""
    clock.phase = phase
    t0 = time.perf_counter()
    for i in range(steps):
        step()
        if not i & 63:
            clock.check()
    return time.perf_counter() - t0


def _raw_drain(r: Ceiling, stream: str, count: int, clock: _Clock) -> float:
    """Seconds to read, ack and delete ``count`` entries of ``stream`` in batches."""
    clock.phase = "raw drain"
    return r.drain(stream, count, clock.check)


def _measure(app: StreamQ, r: Ceiling, url: str, ns: str, n: int, concurrency: int,
             payload_bytes: int, clock: _Clock, say: Callable[[str], None],
             procs: list[subprocess.Popen[bytes]]) -> tuple[dict[str, float], dict[str, Any]]:
    fn, queue = bench_tasks.noop.fn, bench_tasks.noop.options.queue
    noop = app.task(name=bench_tasks.NOOP_NAME, queue=queue)(fn)
    sink = app.task(name="streamq.bench.enqueue_only", queue=SINK_QUEUE)(fn)
    args: tuple[Any, ...] = ("x" * payload_bytes,) if payload_bytes else ()
    single, stream, fields = f"{ns}:raw:single", f"{ns}:raw:stream", {"m": b"x" * payload_bytes}

    say(f"enqueue: raw XADD, delay(), raw pipelined XADD, map(): {ROUNDS} alternating "
        f"slices of {n} in all")
    secs = dict.fromkeys(("xadd_single", "delay", "xadd_pipelined", "map"), 0.0)
    for size in [n // ROUNDS + (i < n % ROUNDS) for i in range(ROUNDS)]:
        if size:
            clock.phase = "raw XADD"
            secs["xadd_single"] += r.xadd_single(single, fields, size, clock.check)
            secs["delay"] += _timed(clock, "delay()", size, lambda: sink.delay(*args))
            clock.phase = "raw pipelined XADD"
            secs["xadd_pipelined"] += r.xadd_pipelined(stream, fields, size, clock.check)
            # The lambda runs within this iteration, so it sees this slice's size.
            secs["map"] += _timed(clock, "map()", 1,
                                  lambda: noop.map([args] * size))  # noqa: B023
    r.delete(single)
    out = {k: round(n / v, 1) for k, v in secs.items()}

    say(f"drain: raw drain of {n // 2}, a worker with {concurrency} process(es) drains "
        f"{n} tasks, raw drain of {n - n // 2}")
    r.create_group(stream)
    raw_s = _raw_drain(r, stream, n // 2, clock)
    clock.phase = "drain"
    minute0 = int(time.time() // 60)
    t_spawn = t_prev = t_progress = time.perf_counter()
    proc = _start_worker(url, ns, concurrency, procs)
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
        _check_alive(proc)
        clock.check()
        t_prev = now
        time.sleep(0.02 if first else 0.002)
    assert first is not None
    out["drain"] = round((n - first[1]) / max(now - first[0], 1e-6), 1)
    details: dict[str, Any] = {
        "drain_first_result_s": round(first[0] - t_spawn, 3),
        "drain_counted_tasks": n - first[1], "drain_timed_s": round(now - first[0], 4),
        "drain_longest_stall_s": round(gap, 3)}
    _stop(proc)
    raw_s += _raw_drain(r, stream, n - n // 2, clock)
    out["raw_drain"] = round(n / raw_s, 1)
    r.delete(stream)

    say("streamq: round trips against one idle -c 1 worker")
    clock.phase = "round trips"
    proc = _start_worker(url, ns, 1, procs)
    _wait_registered(r, ns, proc, clock)
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
    rss = [_rss_mb(pid) for pid in _children(proc.pid)]
    if not rss:
        raise BenchError("the -c 1 worker has no child process to measure")
    out["idle_rss"] = round(max(rss), 1)
    details.update(idle_rss_children_mb=[round(x, 1) for x in rss],
                   idle_rss_supervisor_mb=round(_rss_mb(proc.pid), 1))
    _stop(proc)
    return out, details


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, min(len(sorted_values) - 1,
                                    math.ceil(q * len(sorted_values)) - 1))]


# -- worker processes --------------------------------------------------------------------------
def _start_worker(url: str, ns: str, concurrency: int,
                  procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    # A URL holding a password goes in the environment only, not on the command line.
    secret = urlsplit(url).password is not None or "password=" in url
    cmd = [sys.executable, "-m", "streamq", "worker", bench_tasks.__name__, "-c",
           str(concurrency), *([] if secret else ["--url", url]), "--namespace", ns,
           "--log-level", "WARNING"]
    env = dict(os.environ, STREAMQ_URL=url, STREAMQ_NAMESPACE=ns)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    proc.bench_log = log  # type: ignore[attr-defined]
    procs.append(proc)
    return proc


def _check_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        log: IO[bytes] = proc.bench_log  # type: ignore[attr-defined]
        log.seek(0)
        tail = " | ".join(log.read().decode(errors="replace").strip().splitlines()[-5:])
        raise BenchError(f"the bench worker exited with code {proc.returncode}: "
                         f"{tail or 'no output'}")


def _wait_registered(r: Ceiling, ns: str, proc: subprocess.Popen[bytes],
                     clock: _Clock, timeout_s: float = 30.0) -> None:
    """Until the worker's process has registered (its first heartbeat): it is reading."""
    mark, end = f":{proc.pid}:", time.monotonic() + timeout_s
    while not any(mark in m for m in r.workers(ns)):
        _check_alive(proc)
        clock.check()
        if time.monotonic() > end:
            raise BenchError(f"the bench worker did not register within {timeout_s:g}s")
        time.sleep(0.01)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left of its process group; reap."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
        proc.wait()
        proc.bench_log.close()  # type: ignore[attr-defined]


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc/*/stat: the field after ``(comm)``)."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmRSS:"))


# -- the rest ------------------------------------------------------------------------------------
def _versions(r: Ceiling) -> dict[str, Any]:
    return {"python": platform.python_version(), "streamq": metadata.version("streamq"),
            **r.versions(), "cpus": os.cpu_count()}
