"""Tasks for tests/test_diagnose*.py; importable by worker subprocesses as
``tests.diagnose_tasks``. The app's URL and namespace are set by the tests' fixtures
(and by ``--url`` and ``STREAMQ_NAMESPACE`` in worker subprocesses)."""

from __future__ import annotations

import time
from typing import Any

from streamq import StreamQ

app = StreamQ("redis://127.0.0.1:1/0")  # replaced by the fixtures / --url


class PaymentDeclined(Exception):  # noqa: N818 - a user's name, as users pick them
    """An exception of the user's own, with an ``__init__`` that takes other arguments."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"card declined ({code}): {why}")
        self.code = code


class NeedsTwo(Exception):  # noqa: N818 - a user's name
    """An exception whose ``__new__`` refuses TaskFailed's arguments: get() falls back
    to a plain TaskFailed."""

    def __new__(cls, a: int, b: int) -> NeedsTwo:
        return super().__new__(cls, a, b)


def _count(key: str) -> int:
    return int(app.server.connection.client.incr(f"{app.settings.namespace}:count:{key}"))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="side")
def side_add(x: int, y: int) -> int:
    return x + y


@app.task
def declined() -> None:
    raise PaymentDeclined(51, "insufficient funds\non two lines")


@app.task
def key_error() -> Any:
    return {}["no-such-key"]


@app.task
def needs_two() -> None:
    raise NeedsTwo(1, 2)


@app.task
def hidden_error() -> None:
    from tests import diagnose_hidden  # imported by the worker only

    raise diagnose_hidden.HiddenError("from a module the caller never imported")


@app.task
def waits_on_own_queue() -> int:
    return int(add.delay(1, 2).get(timeout=10))


@app.task
def waits_on_a_queue_it_reads() -> int:
    return int(side_add.delay(1, 2).get(timeout=10))


@app.task
def waits_when_allowed() -> int:
    return int(add.delay(1, 2).get(timeout=10, disable_sync_subtasks=False))


@app.task
def slow_first_time(key: str, seconds: float) -> int:
    """Sleeps ``seconds`` on its first run only; returns how many times it ran."""
    n = _count(key)
    if n == 1:
        time.sleep(seconds)
    return n
