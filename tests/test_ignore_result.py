"""``ignore_result`` (issue 13): a call that keeps no record. Its handle says at once
that no result will come; the worker runs it, retries it and dead-letters it as
usual, and counts it, but writes no record, no completion and no STARTED mark."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from streamq import ResultError, StreamQ
from streamq.base import keys
from tests import tasks
from tests.conftest import wait_until

FAST = ("-c", "1", "--heartbeat", "0.2")


def _task_keys(app: StreamQ, rclient: redis.Redis, task_id: str) -> list[bytes]:
    """Every key that names this task (its record, its completion, its queue)."""
    return [k for k in rclient.keys(f"{app.settings.namespace}:*") if task_id.encode() in k]


def test_a_call_without_a_record_runs_and_leaves_nothing(app: StreamQ, rclient: redis.Redis,
                                                         start_worker: Any) -> None:
    quiet = tasks.quiet_count.delay("q")
    with pytest.raises(ResultError, match=r"sent with ignore_result=True: no record is "
                                          r"kept, so no result will come"):
        quiet.get(timeout=5)
    assert quiet.status == "UNKNOWN"
    later = [tasks.count.apply_async(("a",), ignore_result=True),
             tasks.count.apply_async(("a",), ignore_result=True, countdown=0.3),
             *tasks.quiet_count.map(["m"] * 5)]
    assert _task_keys(app, rclient, quiet.id) == []  # not even before it runs
    w = start_worker(app.settings.url, *FAST)
    wait_until(lambda: (tasks.count_of("q"), tasks.count_of("a"), tasks.count_of("m"))
               == (1, 2, 5), timeout=15, message="every call ran")
    assert tasks.add.delay(1, 1).get(timeout=10) == 2  # and the worker wrote its outcomes
    for h in [quiet, *later]:
        assert _task_keys(app, rclient, h.id) == [], h.id
        assert h.status == "UNKNOWN"
    minute_keys = rclient.keys(keys.stats(app.settings.namespace, "default", 0)[:-1] + "*")
    assert sum(int(rclient.hget(k, "succeeded") or 0) for k in minute_keys) == 9
    assert w.stop() == 0


def test_retries_and_dead_letters_still_work_without_a_record(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    w = start_worker(app.settings.url, *FAST)
    flaky = tasks.flaky.apply_async(("twice", 2), ignore_result=True)
    failing = tasks.fail.apply_async(("for good",), ignore_result=True)
    wait_until(lambda: tasks.count_of("twice") == 3, timeout=20, message="two retries")
    (dead,) = wait_until(lambda: app.dead.list("default"), timeout=15, message="dead")
    assert dead.task_id == failing.id and "ValueError: for good" in dead.reason
    assert tasks.add.delay(2, 2).get(timeout=10) == 4
    for h in (flaky, failing):
        assert _task_keys(app, rclient, h.id) == [], h.id
    assert w.stop() == 0


def test_a_long_call_without_a_record_is_not_marked_started(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    w = start_worker(app.settings.url, *FAST)
    slow = tasks.sleep_then_count.apply_async(("slow", 0.5), ignore_result=True)
    wait_until(lambda: tasks.count_of("slow") == 1, timeout=15, message="started")
    for _ in range(10):  # while it sleeps: housekeeping would mark it STARTED by now
        assert _task_keys(app, rclient, slow.id) == []
        time.sleep(0.05)
    assert tasks.add.delay(1, 2).get(timeout=10) == 3
    assert _task_keys(app, rclient, slow.id) == []
    assert w.stop() == 0
