"""Periodic schedules for tests; importable by worker subprocesses as
``tests.periodic_tasks``.

``PERIODIC_SET`` (read at import, comma-separated) picks the schedules a process
defines, so each test's workers fire only what it is about: ``ticks`` (every second),
``slow`` (skip_if_running on a task that outlasts its interval), ``cli`` (a cron
schedule and a second every-second one). Each run appends ``<tick> <task id>`` to a
list in the server, so tests count ticks and calls exactly across processes.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from streamq import StreamQ, current_task

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by --url / the tests


def runs_key(name: str) -> str:
    return f"{app.settings.namespace}:runs:{name}"


def _note(name: str, tick: str) -> None:
    ctx = current_task()
    assert ctx is not None
    app.server.connection.client.rpush(runs_key(name), f"{tick} {ctx.id}")


@app.task
def tick(name: str, tick: str) -> None:
    _note(name, tick)


@app.task
def slow(name: str, seconds: float, tick: str) -> None:
    _note(name, f"{tick} start")
    time.sleep(seconds)
    _note(name, f"{tick} end")


_SETS = set(filter(None, os.environ.get("PERIODIC_SET", "").split(",")))

if "ticks" in _SETS:
    app.add_periodic(tick, every=1, kwargs={"name": "ticks"}, name="ticks", tick_kwarg="tick")
if "slow" in _SETS:
    app.add_periodic(slow, every=timedelta(milliseconds=400), name="slow",
                     kwargs={"name": "slow", "seconds": 1.0}, tick_kwarg="tick",
                     skip_if_running=True)
if "cli" in _SETS:
    app.add_periodic(tick, cron="*/5 * * * *", tz="Europe/Paris", name="report",
                     kwargs={"name": "report"}, tick_kwarg="tick", queue="reports")
if "cli" in _SETS or "cli-old" in _SETS:
    app.add_periodic(tick, every=1, kwargs={"name": "beat"}, name="beat", tick_kwarg="tick")
if "cli-old" in _SETS:
    app.add_periodic(tick, every=3600, kwargs={"name": "hourly"}, name="hourly",
                     tick_kwarg="tick")
