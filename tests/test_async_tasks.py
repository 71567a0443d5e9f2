"""``async def`` tasks (issue 13): they run on one event loop per worker process, many
at once, next to sync tasks; ``current_task()`` is each one's own; time limits cancel
them without replacing the process; called locally, they are awaited here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from streamq import StreamQ, TaskFailed
from tests import async_tasks as tasks
from tests.tasks import count_of

FAST = ("--heartbeat", "0.2", "--log-level", "INFO")
MODULE = "tests.async_tasks"


@pytest.fixture(autouse=True)
def _async_app(app: StreamQ) -> Iterator[None]:
    """tests.async_tasks.app on the test's server and namespace (``app`` is that of
    tests.tasks, whose counters the tests read)."""
    tasks.app.configure(url=app.settings.url, namespace=app.settings.namespace,
                        heartbeat_s=0.5, block_ms=200)
    yield
    tasks.app.close()


def test_async_tasks_overlap_on_one_loop(app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", *FAST, module=MODULE)
    handles = tasks.async_nap.map([(0.3,)] * 60)
    peaks = [h.get(timeout=30) for h in handles]
    assert max(peaks) >= 30, peaks  # one process, one thread: the waits overlapped
    assert all(h.status == "SUCCESS" for h in handles)
    assert w.stop() == 0


def test_async_concurrency_caps_the_coroutines_at_once(app: StreamQ,
                                                       start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--async-concurrency", "5", *FAST,
                     module=MODULE)
    handles = tasks.async_nap.map([(0.2,)] * 20)
    assert max(h.get(timeout=30) for h in handles) == 5  # all five used, never more
    assert w.stop() == 0


def test_current_task_is_each_coroutines_own(app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", *FAST, module=MODULE)
    handles = tasks.async_whoami.map([(0.05,)] * 20)
    assert [h.get(timeout=20) for h in handles] == [h.id for h in handles]
    assert w.stop() == 0


def test_sync_and_async_tasks_share_a_worker(app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--threads", "2", *FAST,
                     module=MODULE)
    sync = [tasks.add.delay(i, i) for i in range(20)]
    coros = [tasks.async_add.delay(i, 1) for i in range(20)]
    assert [h.get(timeout=20) for h in sync] == [2 * i for i in range(20)]
    assert [h.get(timeout=20) for h in coros] == [i + 1 for i in range(20)]
    failed = tasks.async_fail.delay("nope")
    with pytest.raises(TaskFailed) as caught:
        failed.get(timeout=20)
    assert caught.value.exc_type == "ValueError" and caught.value.exc_message == "nope"
    assert w.stop() == 0


@pytest.mark.parametrize("which", ["soft", "hard"])
def test_time_limits_cancel_an_async_task(app: StreamQ, start_worker: Any,
                                          which: str) -> None:
    w = start_worker(app.settings.url, "-c", "1", *FAST, module=MODULE)
    task = tasks.async_soft_limited if which == "soft" else tasks.async_hard_limited
    stuck = task.delay(f"limit-{which}", 30.0)
    other = tasks.async_nap.delay(0.1)
    with pytest.raises(TaskFailed) as caught:
        stuck.get(timeout=20)
    if which == "soft":
        assert caught.value.exc_type == "streamq.base.errors.SoftTimeLimitExceeded"
        assert "soft time limit of 0.3s" in caught.value.exc_message
    else:
        assert caught.value.exc_type == "TimeLimitExceeded"
        assert "cancelled" in caught.value.exc_message
    assert count_of(f"limit-{which}") == 1  # it saw the cancellation and cleaned up
    assert other.get(timeout=10) >= 1
    out = w.output()
    assert "died" not in out and "killing" not in out  # the process was not replaced
    assert w.stop() == 0


def test_an_async_task_called_here_is_awaited_here(app: StreamQ) -> None:
    assert asyncio.run(tasks.async_add(2, 3)) == 5
    assert tasks.async_add.is_async and not tasks.add.is_async


def test_an_async_task_sent_to_a_queue_of_sync_tasks_still_runs(
        app: StreamQ, start_worker: Any) -> None:
    """A worker whose queues have no async task keeps its one-at-a-time loop; an async
    task routed there anyway runs in it, alone."""
    w = start_worker(app.settings.url, "-c", "1", "-Q", "plain", *FAST, module=MODULE)
    handles = [tasks.async_add.apply_async((i, 10), queue="plain") for i in range(3)]
    assert [h.get(timeout=15) for h in handles] == [10, 11, 12]
    assert w.stop() == 0
