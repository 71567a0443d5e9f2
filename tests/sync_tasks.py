"""An app of sync tasks only (``tests.tasks`` has async ones too, which change how a
worker waits): importable by worker subprocesses as ``tests.sync_tasks``."""

from __future__ import annotations

import time

from streamq import StreamQ

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by the fixtures / --url


@app.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
