"""Tasks for ``streamq bench``: the worker it starts imports this module.

``python -m streamq worker streamq.cli.bench_tasks --url URL --namespace NS`` points
``app`` at the bench's server and its throw-away namespace; importing this module
connects to nothing.
"""

from __future__ import annotations

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
