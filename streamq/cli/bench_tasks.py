"""Tasks for ``streamq bench``: the worker it starts imports this module.

``python -m streamq worker streamq.cli.bench_tasks --url URL --namespace NS`` points
``app`` at the bench's server and its throw-away namespace; importing this module
connects to nothing.
"""

from __future__ import annotations

from ..api.app import StreamQ

app = StreamQ()  # the URL and namespace come from the worker's --url and --namespace

NOOP_NAME = "streamq.bench.noop"


@app.task(name=NOOP_NAME)
def noop(data: str = "") -> None:
    """Does nothing: what the bench measures is streamq's own cost per task."""
