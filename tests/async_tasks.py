"""async def tasks for tests, on an app of their own: a worker of ``tests.tasks`` stays
one of sync tasks only (an app with async tasks runs them on an event loop next to task
threads). Importable by worker subprocesses as ``tests.async_tasks``."""

from __future__ import annotations

from streamq import StreamQ, current_task

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by the fixtures / --url


def _incr(key: str) -> int:
    """The counter ``tests.tasks.count_of`` reads (same server and namespace)."""
    return int(app.server.connection.client.incr(f"{app.settings.namespace}:count:{key}"))


@app.task
def add(x: int, y: int) -> int:
    return x + y


_ASYNC_RUNNING = 0


@app.task
async def async_nap(seconds: float) -> int:
    """Sleeps on the event loop; returns how many async naps ran at once at its end."""
    import asyncio

    global _ASYNC_RUNNING
    _ASYNC_RUNNING += 1
    try:
        await asyncio.sleep(seconds)
        return _ASYNC_RUNNING
    finally:
        _ASYNC_RUNNING -= 1


@app.task
async def async_whoami(seconds: float) -> str:
    import asyncio

    await asyncio.sleep(seconds)
    return current_task().id


@app.task
async def async_add(x: int, y: int) -> int:
    return x + y


@app.task
async def async_fail(message: str) -> None:
    raise ValueError(message)


async def _until_cancelled(key: str, seconds: float) -> None:
    import asyncio

    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _incr(key)  # clean-up (a blocking call: it is short)
        raise


@app.task(soft_timeout=0.3)
async def async_soft_limited(key: str, seconds: float) -> None:
    await _until_cancelled(key, seconds)


@app.task(timeout=0.3)
async def async_hard_limited(key: str, seconds: float) -> None:
    await _until_cancelled(key, seconds)

