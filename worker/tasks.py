"""Example tasks for the reference worker and `streamq demo`.

Run them with `streamq worker worker.tasks` from the repository root.
"""

from __future__ import annotations

import time

from streamq import Retry, StreamQ, current_task

# No URL: STREAMQ_URL if set, else the embedded server of the current directory.
app = StreamQ()


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fib(n: int) -> int:
    """CPU-bound work."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@app.task
def word_count(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(max_retries=5, retry_backoff=0.1)
def fail_times(n: int) -> int:
    """Fails its first ``n`` attempts, then returns the attempt number."""
    ctx = current_task()
    assert ctx is not None
    if ctx.retries < n:
        raise Retry(countdown=0.05, reason=f"attempt {ctx.retries + 1} of {n + 1}")
    return ctx.retries + 1
