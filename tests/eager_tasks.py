"""Tasks for tests/test_eager.py, on an app in eager mode with no server at all: its
URL points at a closed port, so anything that tried to connect would fail. Every run
of a task counts itself in ``CALLS`` (in this process: eager tasks run in the caller)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from streamq import Reject, Retry, StreamQ, current_task

app = StreamQ("redis://127.0.0.1:1/0", eager=True, namespace="eager")

CALLS: Counter[str] = Counter()


class PaymentDeclinedError(Exception):
    pass


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def echo(value: Any) -> Any:
    return value


@app.task(max_retries=3)
def retried(key: str, failures: int) -> int:
    """Asks for a retry an hour later ``failures`` times, then returns its attempt."""
    CALLS[key] += 1
    if CALLS[key] <= failures:
        raise Retry(countdown=3600)
    return CALLS[key]


@app.task(max_retries=2, autoretry_for=(ConnectionError,), retry_backoff=3600)
def autoretried(key: str, failures: int, error: str = "ConnectionError") -> int:
    CALLS[key] += 1
    if CALLS[key] <= failures:
        raise ConnectionRefusedError("upstream down") if error == "ConnectionError" else \
            ValueError("not a connection problem")
    return CALLS[key]


@app.task
def declined(amount: int) -> None:
    raise PaymentDeclinedError(f"card declined for {amount}")


@app.task
def rejected(reason: str) -> None:
    raise Reject(reason)


@app.task
def whoami() -> dict[str, Any]:
    ctx = current_task()
    assert ctx is not None
    return ctx._asdict()


@app.task
def returns_a_set() -> object:
    return {1, 2}


@app.task(ignore_result=True)
def quiet(key: str) -> int:
    CALLS[key] += 1
    return CALLS[key]


@app.task(queue="other")
def child(x: int) -> int:
    return x * 10


@app.task
def parent(x: int) -> int:
    """Waits for a task on another queue: allowed inside a task, as for real."""
    return int(child.delay(x).get()) + 1


@app.task
def waits_on_its_own_queue(x: int) -> int:
    """Waits for a task on its own queue: refused inside a task, as for real."""
    return int(add.delay(x, 1).get())


@app.task
async def aadd(x: int, y: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx = current_task()
    return {"sum": x + y, "id": ctx.id if ctx else None}


@app.task(max_retries=1)
async def afails(key: str) -> None:
    CALLS[key] += 1
    await asyncio.sleep(0)
    raise PaymentDeclinedError(f"async attempt {CALLS[key]}")
