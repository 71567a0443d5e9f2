"""Tasks for the Sentinel tests: each run is logged to a file, not to the server, so
the count survives a failover that loses the server's latest writes."""

from __future__ import annotations

import os
import time

from streamq import StreamQ, current_task

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by the test / --url


@app.task
def logged(n: int) -> int:
    """Append this call's id to ``$SQ_RUNS_FILE`` (one line per run), then nap."""
    ctx = current_task()
    assert ctx is not None
    with open(os.environ["SQ_RUNS_FILE"], "a") as out:
        out.write(f"{ctx.id}\n")
    time.sleep(0.005)
    return n * 2
