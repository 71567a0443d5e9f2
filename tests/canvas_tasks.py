"""Tasks for the canvas tests (``tests/test_canvas.py``), on ``tests.tasks.app``; a
worker imports them as ``streamq worker tests.canvas_tasks``. Each counts its runs in
the server, so the tests count executions exactly across processes."""

from __future__ import annotations

import json
import time
from typing import Any

from streamq import TaskFailed
from tests.tasks import _incr, add, app, echo, fail

__all__ = ["add", "app", "echo", "fail"]


def _client() -> Any:
    return app.server.connection.client


@app.task
def inc(x: int, key: str = "inc") -> int:
    _incr(key)
    return x + 1


@app.task
def boom(x: Any, key: str = "boom") -> None:
    _incr(key)
    raise ValueError(f"boom on {x!r}")


@app.task
def square(x: int, key: str = "square", seconds: float = 0.0) -> int:
    _incr(key)
    if seconds:
        time.sleep(seconds)
    return x * x


@app.task
def total(values: list[int], key: str = "total") -> int:
    """A chord body: counts its runs and keeps what it was given."""
    _incr(key)
    _client().rpush(f"{app.settings.namespace}:got:{key}", json.dumps(values))
    return sum(values)


@app.task
def outcomes(values: list[Any], key: str = "outcomes") -> list[Any]:
    """A chord body for on_error="collect": each member's value, or its error's text."""
    _incr(key)
    return [f"failed: {v.exc_message}" if isinstance(v, TaskFailed) else v for v in values]


@app.task(queue="canvas_async")
async def ainc(x: int, key: str = "ainc") -> int:
    """An async step: only a worker reading ``canvas_async`` runs it, on its event loop
    (the other workers of this module keep their loop of sync tasks)."""
    _incr(key)
    return x + 1


def got(key: str) -> list[Any]:
    """What a ``total`` body was given, one list per run."""
    return [json.loads(v) for v in
            _client().lrange(f"{app.settings.namespace}:got:{key}", 0, -1)]
