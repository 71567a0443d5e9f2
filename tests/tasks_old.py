"""The release of ``tests.tasks`` before this one, for rolling-deploy tests: the same
task names, minus those added since (``new_in_this_release``).

Start a worker with ``module="tests.tasks_old"``; it reads the URL and namespace
from ``--url`` and ``STREAMQ_NAMESPACE``, like one of ``tests.tasks``.
"""

from __future__ import annotations

from streamq import StreamQ

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by --url


@app.task(name="tests.tasks.add")
def add(x: int, y: int) -> int:
    return x + y
