"""Tasks for ``streamq bench``: the worker it starts imports this module.

``python -m streamq worker streamq.cli.bench_tasks --url URL --namespace NS`` points
``app`` at the bench's server and its throw-away namespace; importing this module
connects to nothing.
"""

from __future__ import annotations

import asyncio
import time

from ..api.app import StreamQ

app = StreamQ()  # the URL and namespace come from the worker's --url and --namespace

NOOP_NAME = "streamq.bench.noop"


@app.task(name=NOOP_NAME)
def noop(data: str = "") -> None:
    """Does nothing: what the bench measures is streamq's own cost per task."""


SLEEP_NAME = "streamq.bench.sleep"


@app.task(name=SLEEP_NAME, queue="bench-spread")
def sleep(seconds: float) -> None:
    """Waits like a task calling a slow HTTP API: what the spread row measures is how
    many processes wait at once."""
    time.sleep(seconds)


IO_NAME = "streamq.bench.io"


@app.task(name=IO_NAME, queue="bench-io")
def io(key: str) -> int:
    """One blocking round trip of its own to the server (as a task that reads a row or
    calls an API waits on it): what the io row measures is how well a process
    overlaps such waits."""
    return int(app.server.connection.client.incr(f"{app.settings.namespace}:bench-io:{key}"))


THREAD_SLEEP_NAME = "streamq.bench.thread_sleep"


@app.task(name=THREAD_SLEEP_NAME, queue="bench-sleep")
def thread_sleep(seconds: float) -> None:
    """Waits, in a thread of its process (the sleep row)."""
    time.sleep(seconds)


ASYNC_SLEEP_NAME = "streamq.bench.async_sleep"


@app.task(name=ASYNC_SLEEP_NAME, queue="bench-async-sleep")
async def async_sleep(seconds: float) -> None:
    """Waits on its process's event loop (the sleep row's async half)."""
    await asyncio.sleep(seconds)


PARTS_QUEUE = "bench-parts"
PARTITIONS = 6
"""The partitioned queue of the ``partitions`` rows (``bench_partitions``): 6, so
that a 3-node cluster holds 2 on each node."""
app.queue(PARTS_QUEUE, partitions=PARTITIONS)


@app.task(name=NOOP_NAME + "_parts", queue=PARTS_QUEUE)
def noop_parts() -> None:
    """The noop of the partitioned queue."""
