"""Tasks for tests; importable by worker subprocesses as ``tests.tasks``.

Counters live in the server (``INCR``) so tests count executions exactly across
processes. The app's URL and namespace are set per test by the fixtures (and by
``--url``/``STREAMQ_NAMESPACE`` in worker subprocesses).
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

from streamq import Reject, Retry, StreamQ, current_task
from streamq.base.errors import BrokerConnectionError

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by the fixtures / --url


def _incr(key: str) -> int:
    return int(app.server.connection.client.incr(f"{app.settings.namespace}:count:{key}"))


def count_of(key: str) -> int:
    return int(app.server.connection.client.get(f"{app.settings.namespace}:count:{key}") or 0)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def echo(value: Any) -> Any:
    return value


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def count(key: str) -> int:
    return _incr(key)


@app.task
def context() -> dict[str, Any]:
    ctx = current_task()
    assert ctx is not None
    return {"id": ctx.id, "name": ctx.name, "queue": ctx.queue, "retries": ctx.retries,
            "deliveries": ctx.deliveries}


@app.task
def sleep_then_count(key: str, seconds: float) -> int:
    n = _incr(key)
    time.sleep(seconds)
    return n


@app.task
def record_start(key: str) -> float:
    """Appends the wall-clock start time (ms) to a list, for timing tests."""
    now = time.time() * 1000
    ctx = current_task()
    assert ctx is not None
    app.server.connection.client.rpush(f"{app.settings.namespace}:starts:{key}", f"{ctx.id} {now}")
    return now


@app.task
def die_on_first_delivery(key: str) -> int:
    """SIGKILLs its own process the first time it runs."""
    n = _incr(key)
    if n == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return n


@app.task(max_deliveries=3)
def poison(key: str) -> None:
    """Kills its process every time: must end in dead letters after 3 deliveries."""
    _incr(key)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(max_retries=3, retry_backoff=0.05, retry_backoff_max=0.2)
def flaky(key: str, failures: int) -> int:
    """Raises on its first ``failures`` runs."""
    n = _incr(key)
    if n <= failures:
        raise ValueError(f"failure {n} of {failures}")
    return n


@app.task(max_retries=2)
def explicit_retry(key: str) -> int:
    n = _incr(key)
    if n < 3:
        raise Retry(countdown=0.05)
    return n


@app.task(max_retries=1, autoretry_for=(KeyError,))
def only_keyerror_retries(key: str, exc: str) -> None:
    _incr(key)
    raise (KeyError if exc == "KeyError" else ValueError)(exc)


@app.task
def reject(reason: str) -> None:
    raise Reject(reason)


@app.task(timeout=1.0, max_retries=1)
def too_slow(key: str, seconds: float) -> int:
    n = _incr(key)
    time.sleep(seconds)
    return n


@app.task
def unserializable_result() -> object:
    return object()


@app.task(queue="other")
def on_other_queue(x: int) -> int:
    return x * 10


@app.task
def nap(seconds: float, tag: int) -> int:
    """Sleeps without touching the server (safe while the server is down)."""
    time.sleep(seconds)
    return tag


@app.task
def fail_first(key: str) -> int:
    """Fails its first run (no retries: to dead letters), succeeds after a requeue."""
    n = _incr(key)
    if n == 1:
        raise ValueError(f"first run of {key}")
    return n


class Unprintable(Exception):  # noqa: N818 - named for what it does
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")


@app.task
def unprintable_error(key: str) -> None:
    _incr(key)
    raise Unprintable()


@app.task
def nested_result(key: str, depth: int) -> list[Any]:
    """Returns a list nested ``depth`` deep (too deep for any encoder at 100,000)."""
    _incr(key)
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@app.task
def cyclic_result(key: str) -> list[Any]:
    """Returns a list that contains itself."""
    _incr(key)
    value: list[Any] = []
    value.append(value)
    return value


@app.task(max_retries=3)
def infinite_countdown(key: str) -> None:
    """Asks for a retry after an infinite countdown."""
    _incr(key)
    raise Retry(countdown=float("inf"))


@app.task(max_retries=1)
def retry_later(key: str, countdown: float) -> int:
    """Asks for a retry ``countdown`` seconds later on its first run."""
    n = _incr(key)
    if n == 1:
        raise Retry(countdown=countdown)
    return n


@app.task
def hold_the_gil(key: str, seconds: int) -> int:
    """Counts, then sleeps in a C call that keeps the interpreter lock (ctypes.PyDLL
    does not release it), so no other thread of its process runs meanwhile."""
    import ctypes

    n = _incr(key)
    ctypes.PyDLL(None).sleep(seconds)
    return n


@app.task
def big_result(size: int) -> str:
    """Returns a string of ``size`` characters (larger than a lowered server limit)."""
    return "x" * size


@app.task
def big_error(size: int) -> None:
    """Raises an error whose message is ``size`` characters long."""
    raise ValueError("e" * size)


@app.task
def new_in_this_release(key: str) -> int:
    """A task that ``tests.tasks_old`` (the release before) does not have."""
    return _incr(key)


_OVERLAP = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
redis.call('SADD', KEYS[3], ARGV[1])
return n
"""


@app.task
def overlap(key: str, seconds: float) -> int:
    """Sleeps like a task waiting on an HTTP call, counting how many run at once
    (``{key}:max``) and in which processes (``{key}:pids``)."""
    client = app.server.connection.client
    tag = f"{app.settings.namespace}:overlap:{{{key}}}"
    client.eval(_OVERLAP, 3, f"{tag}:running", f"{tag}:max", f"{tag}:pids", os.getpid())
    try:
        time.sleep(seconds)
    finally:
        client.decr(f"{tag}:running")
    return os.getpid()


_HOARD: list[bytearray] = []


@app.task
def pid_count(key: str, grow_mb: int = 0) -> int:
    """Counts, keeps ``grow_mb`` MB more of memory for the rest of its process's life
    (a leak), and returns its process's pid (recycling tests)."""
    _incr(key)
    if grow_mb:
        _HOARD.append(bytearray(grow_mb * 1024 * 1024))
    return os.getpid()


@app.task(soft_timeout=0.3, max_retries=0)
def soft_limited(key: str, seconds: float) -> str:
    """Sleeps ``seconds``; when its soft limit interrupts it, cleans up (counts) and
    returns normally."""
    from streamq import SoftTimeLimitExceeded

    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # Python code, where a thread can be told
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        _incr(key)
        return "cleaned up"
    return "finished"


@app.task(soft_timeout=0.3, max_retries=0)
def soft_unhandled(seconds: float) -> None:
    """Does not catch its soft limit: it fails with it."""
    time.sleep(seconds)


@app.task(ignore_result=True)
def quiet_count(key: str) -> int:
    """Counts; keeps no record (ignore_result)."""
    return _incr(key)


ORDERS = app.queue("orders", partitions=8)
"""A partitioned queue (tests/test_partitions.py)."""


@app.task(queue="orders", max_retries=3, retry_backoff=0.05, retry_backoff_max=0.1)
def ordered(key: str, i: int, fail_first: bool = False) -> int:
    """Appends ``i`` to the key's list; counts overlapping runs of one key (there must
    be none); fails its first attempt when asked (a retry must keep its place)."""
    client = app.server.connection.client
    ns = app.settings.namespace
    if fail_first and client.incr(f"{ns}:tries:{key}:{i}") == 1:
        raise ValueError("the first attempt fails")
    if client.incr(f"{ns}:running:{key}") > 1:
        client.incr(f"{ns}:overlaps")
    try:
        client.rpush(f"{ns}:order:{key}", i)
        time.sleep(random.random() * 0.004)
    finally:
        client.decr(f"{ns}:running:{key}")
    return i


@app.task(max_retries=20, retry_backoff=0.2, retry_backoff_max=1.0,
          autoretry_for=(BrokerConnectionError,))
def count_through_failover(key: str) -> int:
    """Counts, and retries while its own call to the server meets a failover."""
    n = _incr(key)
    time.sleep(0.005)
    return n
