"""The bench's worker subprocesses and its time limit, shared by every measurement.

Subprocesses get their own session and are stopped by PID: SIGTERM, then SIGKILL of
their process group after a timeout, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO
from urllib.parse import urlsplit

from ..base.errors import StreamQError
from ..server.ceiling import Ceiling
from . import bench_tasks

STOP_TIMEOUT_S = 15.0


class BenchError(StreamQError):
    """The benchmark could not finish (time limit, a worker that died, ...)."""


class Clock:
    def __init__(self, limit_s: float) -> None:
        self.limit_s, self.end, self.phase = limit_s, time.monotonic() + limit_s, "start-up"

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"the benchmark exceeded its time limit of {self.limit_s:g}s "
                             f"(during {self.phase})")


# -- worker processes --------------------------------------------------------------------------
def start_worker(url: str, ns: str, concurrency: int, procs: list[subprocess.Popen[bytes]],
                 queue: str, *extra: str) -> subprocess.Popen[bytes]:
    """``streamq worker`` on bench_tasks reading ``queue`` only, added to ``procs``."""
    # A URL holding a password goes in the environment only, not on the command line.
    secret = urlsplit(url).password is not None or "password=" in url
    cmd = [sys.executable, "-m", "streamq", "worker", bench_tasks.__name__, "-c",
           str(concurrency), "-Q", queue, *([] if secret else ["--url", url]), "--namespace", ns,
           "--log-level", "WARNING", *extra]
    env = dict(os.environ, STREAMQ_URL=url, STREAMQ_NAMESPACE=ns)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    proc.bench_log = log  # type: ignore[attr-defined]
    procs.append(proc)
    return proc


def check_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        log: IO[bytes] = proc.bench_log  # type: ignore[attr-defined]
        log.seek(0)
        tail = " | ".join(log.read().decode(errors="replace").strip().splitlines()[-5:])
        raise BenchError(f"the bench worker exited with code {proc.returncode}: "
                         f"{tail or 'no output'}")


def wait_registered(r: Ceiling, ns: str, proc: subprocess.Popen[bytes],
                    clock: Clock, timeout_s: float = 30.0) -> None:
    """Until the worker's process has registered (its first heartbeat): it is reading."""
    mark, end = f":{proc.pid}:", time.monotonic() + timeout_s
    while not any(mark in m for m in r.workers(ns)):
        check_alive(proc)
        clock.check()
        if time.monotonic() > end:
            raise BenchError(f"the bench worker did not register within {timeout_s:g}s")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[bytes]) -> None:
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


def children(pid: int) -> list[int]:
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


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmRSS:"))
