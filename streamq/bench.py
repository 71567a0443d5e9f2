"""``streamq bench``: streamq next to the raw redis-py ceiling, in one run on one server.

Absolute numbers move with the machine; the ratios streamq/ceiling, measured
minutes apart against the same server, move much less. Nothing here prints:
phases are announced through the ``progress`` callback.

Ceilings (raw redis-py, one connection, this process; every entry carries one
field ``m`` of ``payload_bytes`` bytes):

- ``xadd_single``: XADD, one round trip each, entries/s;
- ``xadd_pipelined``: XADD in pipelines of 100, entries/s (this fills the stream
  for the next one);
- ``raw_drain``: XREADGROUP COUNT 100 (one round trip), then XACK + XDEL of that
  batch pipelined (one round trip), until the N entries are gone, entries/s.

streamq, in a fresh namespace ``streamq-bench-<hex>`` whose keys are all deleted
at the end:

- ``delay``: ``task.delay()`` N times, one at a time (to a queue no worker reads);
- ``map``: one ``task.map()`` of N calls; these are the tasks the drain then runs;
- ``drain``: a real ``python -m streamq worker streamq.bench_tasks -c C`` subprocess
  runs them. Timed from the FIRST STORED RESULT to the last, so interpreter and
  worker start-up are excluded; the tasks already done at the first observation
  are not counted. Completion is read from the per-minute stats hashes (field
  ``succeeded``, written last in each outcome pipeline): every 2 ms until the first
  result, then every 20 ms;
- ``roundtrip_p50``/``roundtrip_p99``: ``delay()`` then ``.get()``, one at a time,
  against one idle ``-c 1`` worker (after a warm-up), in ms;
- ``idle_rss``: VmRSS of that worker's child process (largest, if several) after
  the round trips, in MB (shared copy-on-write pages of the fork count in full).

Every subprocess is started in its own session and stopped by PID: SIGTERM, then
SIGKILL of its process group after a timeout, also on errors and Ctrl-C.
"""

from __future__ import annotations

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

import redis

from . import bench_tasks, keys
from .app import StreamQ
from .connection import redis_errors
from .errors import StreamQError
from .settings import mask_url

BATCH = 100
ROUNDTRIPS = 1000
ROUNDTRIP_BUDGET_S = 30.0
WARMUP = 20
STOP_TIMEOUT_S = 15.0
SINK_QUEUE = "bench-enqueue-only"

# key: (label, unit, ceiling key or None, target applies to "ratio" or "value", op, bound)
ROWS: dict[str, tuple[str, str, str | None, str, str, float]] = {
    "delay": ("delay(), one at a time", "tasks/s", "xadd_single", "ratio", ">=", 0.80),
    "map": ("map(), bulk enqueue", "tasks/s", "xadd_pipelined", "ratio", ">=", 0.50),
    "drain": ("drain: worker runs noops", "tasks/s", "raw_drain", "ratio", ">=", 0.30),
    "roundtrip_p50": ("delay()+get() p50", "ms", None, "value", "<", 1.0),
    "roundtrip_p99": ("delay()+get() p99", "ms", None, "value", "<", 5.0),
    "idle_rss": ("idle worker RSS", "MB", None, "value", "<", 60.0),
}
CEILINGS = {
    "xadd_single": "raw XADD",
    "xadd_pipelined": "raw XADD pipelined x100",
    "raw_drain": "raw XREADGROUP+XACK+XDEL",
}


class BenchError(StreamQError):
    """The benchmark could not finish (time limit, a worker that died, ...)."""


class _Clock:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.end = time.monotonic() + limit_s
        self.phase = "start-up"

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
    raw: redis.Redis | None = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with app.broker.errors():
            resolved = app.broker.url
            app.broker.client.ping()
        with redis_errors(resolved):
            raw = redis.Redis.from_url(resolved, socket_timeout=60, protocol=2)
            versions = _versions(raw)
            say(f"server {versions['server_name']} {versions['server_version']} at "
                f"{mask_url(resolved)}; namespace {ns}")
            ceilings = _ceilings(raw, ns, n, b"x" * payload_bytes, clock, say)
            measured, details = _streamq(app, raw, resolved, ns, n, concurrency,
                                         "x" * payload_bytes, clock, say, procs)
    finally:
        for proc in procs:
            _stop(proc)
        if raw is not None:
            say("deleting the benchmark's keys")
            try:
                _delete_namespace(raw, ns)
            except redis.RedisError:
                pass  # the server is gone: nothing to clean, and the first error wins
            raw.close()
        app.close()
    rows = []
    for key, (label, unit, ceiling_key, applies, op, bound) in ROWS.items():
        value = measured[key]
        ceiling = ceilings[ceiling_key]["value"] if ceiling_key else None
        ratio = round(value / ceiling, 4) if ceiling else None
        checked = ratio if applies == "ratio" else value
        ok = checked is not None and (checked >= bound if op == ">=" else checked < bound)
        target = f"{op} {bound:.2f}" if applies == "ratio" else f"{op} {bound:g} {unit}"
        rows.append({"key": key, "measurement": label, "value": value, "unit": unit,
                     "ceiling": ceiling, "ceiling_key": ceiling_key,
                     "ceiling_measurement": CEILINGS.get(ceiling_key or ""),
                     "ratio": ratio, "target": target, "meets_target": bool(ok)})
    return {
        "params": {"url": mask_url(resolved), "n": n, "concurrency": concurrency,
                   "payload_bytes": payload_bytes, "namespace": ns,
                   "time_limit_s": time_limit_s},
        "versions": versions, "ceilings": ceilings, "rows": rows, "details": details,
        "elapsed_s": round(time.perf_counter() - t_all, 3),
    }


# -- ceilings --------------------------------------------------------------------------------
def _ceilings(r: redis.Redis, ns: str, n: int, value: bytes, clock: _Clock,
              say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    stream, group, fields = f"{ns}:raw:stream", "bench", {"m": value}
    clock.phase = "raw XADD"
    say(f"ceiling: {n} raw XADD round trips")
    t0 = time.perf_counter()
    for i in range(n):
        r.xadd(stream, fields)
        if not i & 63:
            clock.check()
    single = n / (time.perf_counter() - t0)
    r.delete(stream)

    clock.phase = "raw pipelined XADD"
    say(f"ceiling: {n} raw XADD in pipelines of {BATCH}")
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(BATCH, n - start)):
            pipe.xadd(stream, fields)
        pipe.execute()
        clock.check()
    pipelined = n / (time.perf_counter() - t0)

    clock.phase = "raw drain"
    say(f"ceiling: raw drain of {n} entries")
    r.xgroup_create(stream, group, "0")
    done = 0
    t0 = time.perf_counter()
    while True:
        reply = r.xreadgroup(group, "c", {stream: ">"}, count=BATCH)
        entries = _entries(reply)
        if not entries:
            break
        ids = [entry_id for entry_id, _ in entries]
        pipe = r.pipeline(transaction=False)
        pipe.xack(stream, group, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        done += len(ids)
        clock.check()
    drain = done / (time.perf_counter() - t0)
    r.delete(stream)
    values = {"xadd_single": single, "xadd_pipelined": pipelined, "raw_drain": drain}
    return {k: {"measurement": CEILINGS[k], "value": round(v, 1), "unit": "entries/s"}
            for k, v in values.items()}


def _entries(reply: Any) -> list[Any]:
    """The (id, fields) pairs of an XREADGROUP reply on one stream (RESP2)."""
    return [entry for _stream, entries in reply or () for entry in entries]


# -- streamq -----------------------------------------------------------------------------------
def _streamq(app: StreamQ, r: redis.Redis, url: str, ns: str, n: int, concurrency: int,
             payload: str, clock: _Clock, say: Callable[[str], None],
             procs: list[subprocess.Popen[bytes]]) -> tuple[dict[str, float], dict[str, Any]]:
    fn = bench_tasks.noop.fn
    queue = bench_tasks.noop.options.queue
    noop = app.task(name=bench_tasks.NOOP_NAME, queue=queue)(fn)
    sink = app.task(name="streamq.bench.enqueue_only", queue=SINK_QUEUE)(fn)
    args: tuple[Any, ...] = (payload,) if payload else ()
    out: dict[str, float] = {}
    details: dict[str, Any] = {}

    clock.phase = "delay()"
    say(f"streamq: {n} x delay()")
    t0 = time.perf_counter()
    for i in range(n):
        sink.delay(*args)
        if not i & 63:
            clock.check()
    out["delay"] = round(n / (time.perf_counter() - t0), 1)

    clock.phase = "map()"
    say(f"streamq: map() of {n} calls")
    t0 = time.perf_counter()
    noop.map([args] * n)
    out["map"] = round(n / (time.perf_counter() - t0), 1)

    clock.phase = "drain"
    say(f"streamq: a worker with {concurrency} process(es) drains {n} tasks")
    minute0 = int(time.time() // 60)
    t_spawn = time.perf_counter()
    proc = _start_worker(url, ns, concurrency, procs)
    first: tuple[float, int] | None = None
    t_prev = t_spawn
    while True:
        done = _succeeded(r, ns, queue, minute0)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done) if done < n else (t_prev, 0)  # all done between two polls
        if done >= n:
            break
        _check_alive(proc)
        clock.check()
        t_prev = now
        time.sleep(0.02 if first else 0.002)
    assert first is not None
    out["drain"] = round((n - first[1]) / max(now - first[0], 1e-6), 1)
    details.update(drain_first_result_s=round(first[0] - t_spawn, 3),
                   drain_counted_tasks=n - first[1], drain_timed_s=round(now - first[0], 4))
    _stop(proc)

    clock.phase = "round trips"
    say("streamq: round trips against one idle -c 1 worker")
    proc = _start_worker(url, ns, 1, procs)
    _wait_registered(r, ns, proc, clock)
    for _ in range(WARMUP):
        noop.delay(*args).get(timeout=10)
    samples: list[float] = []
    budget = time.monotonic() + ROUNDTRIP_BUDGET_S
    for _ in range(min(ROUNDTRIPS, n)):
        t0 = time.perf_counter()
        noop.delay(*args).get(timeout=10)
        samples.append((time.perf_counter() - t0) * 1000)
        if time.monotonic() > budget:
            break
        clock.check()
    samples.sort()
    out["roundtrip_p50"] = round(_percentile(samples, 0.50), 3)
    out["roundtrip_p99"] = round(_percentile(samples, 0.99), 3)
    details.update(roundtrip_samples=len(samples),
                   roundtrip_mean_ms=round(sum(samples) / len(samples), 3),
                   roundtrip_max_ms=round(samples[-1], 3))

    clock.phase = "idle RSS"
    time.sleep(0.5)
    children = _children(proc.pid)
    rss = [_rss_mb(pid) for pid in children]
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


def _succeeded(r: redis.Redis, ns: str, queue: str, minute0: int) -> int:
    pipe = r.pipeline(transaction=False)
    for minute in range(minute0 - 1, int(time.time() // 60) + 2):
        pipe.hget(keys.stats(ns, queue, minute), "succeeded")
    return sum(int(v) for v in pipe.execute() if v)


# -- worker processes --------------------------------------------------------------------------
def _start_worker(url: str, ns: str, concurrency: int,
                  procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    # The URL goes on the command line unless it holds a password (then: environment only).
    parts = urlsplit(url)
    secret = parts.password is not None or "password=" in parts.query
    cmd = [sys.executable, "-m", "streamq", "worker", "streamq.bench_tasks",
           "-c", str(concurrency), *([] if secret else ["--url", url]),
           "--namespace", ns, "--log-level", "WARNING"]
    env = dict(os.environ, STREAMQ_URL=url, STREAMQ_NAMESPACE=ns)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    proc.bench_log = log  # type: ignore[attr-defined]
    procs.append(proc)
    return proc


def _log_tail(proc: subprocess.Popen[bytes], lines: int = 5) -> str:
    log: IO[bytes] | None = getattr(proc, "bench_log", None)
    if log is None or log.closed:
        return ""
    log.seek(0)
    return " | ".join(log.read().decode(errors="replace").strip().splitlines()[-lines:])


def _check_alive(proc: subprocess.Popen[bytes]) -> None:
    code = proc.poll()
    if code is not None:
        raise BenchError(f"the bench worker exited with code {code}: "
                         f"{_log_tail(proc) or 'no output'}")


def _wait_registered(r: redis.Redis, ns: str, proc: subprocess.Popen[bytes],
                     clock: _Clock, timeout_s: float = 30.0) -> None:
    """Until the worker's process has registered (its first heartbeat): it is reading."""
    mark = f":{proc.pid}:".encode()
    end = time.monotonic() + timeout_s
    while not any(mark in m for m in r.zrange(keys.workers(ns), 0, -1)):
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
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        log = getattr(proc, "bench_log", None)
        if log is not None:
            log.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- the rest ------------------------------------------------------------------------------------
def _versions(r: redis.Redis) -> dict[str, Any]:
    from redis.utils import HIREDIS_AVAILABLE

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    info = r.info("server")
    name = str(info.get("server_name") or ("valkey" if "valkey_version" in info else "redis"))
    return {
        "python": platform.python_version(), "streamq": dist("streamq"),
        "redis_py": dist("redis"), "hiredis": bool(HIREDIS_AVAILABLE),
        "hiredis_version": dist("hiredis") if HIREDIS_AVAILABLE else None,
        "server_name": name,
        "server_version": str(info.get("valkey_version") or info.get("redis_version")),
        "redis_version": str(info.get("redis_version")),
        "valkey_version": str(info["valkey_version"]) if "valkey_version" in info else None,
        "cpus": os.cpu_count(),
    }


def _delete_namespace(r: redis.Redis, ns: str) -> int:
    deleted, batch = 0, []
    for key in r.scan_iter(match=f"{ns}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += r.unlink(*batch)
            batch.clear()
    if batch:
        deleted += r.unlink(*batch)
    return deleted
