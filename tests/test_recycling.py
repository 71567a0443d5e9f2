"""Recycling (``--max-tasks-per-child``, ``--max-memory-per-child``): a process is
replaced gracefully, and nothing it held is lost, run twice or charged a delivery."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streamq import StreamQ
from streamq.base.errors import ConfigurationError
from streamq.base.settings import Settings
from streamq.worker.recycling import Recycling, Rss, startup_warning, vm_rss_kb
from tests import tasks
from tests.conftest import wait_until

FAST = ("--heartbeat", "0.5", "--claim-after", "60")


def _no_crash(out: str) -> None:
    assert "died with exit code" not in out, out
    assert "Recovered" not in out, out  # the successor found nothing of its own pending


def test_max_tasks_per_child_replaces_the_process_every_n_tasks(
        app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--max-tasks-per-child", "10", *FAST)
    results = tasks.pid_count.map(["n"] * 35)
    pids = [r.get(timeout=30) for r in results]
    assert tasks.count_of("n") == 35  # every task exactly once
    assert all(r.info["deliveries"] == 1 for r in results)
    assert len(set(pids)) == 4  # 10 + 10 + 10 + 5: three recycles
    # Each process ran at most ten, and in order: a read never took more than it may run.
    runs = [pids.count(p) for p in dict.fromkeys(pids)]
    assert runs == [10, 10, 10, 5], runs
    out = wait_until(lambda: (o := w.output()).count("recycled after 10 tasks") >= 3 and o,
                     message="three recycle lines")
    assert "recycled after 10 tasks (--max-tasks-per-child 10); its successor takes " \
           "over." in out
    _no_crash(out)
    assert w.stop() == 0


@pytest.mark.parametrize("server", ["valkey", "redis"], indirect=True)  # the worker's subject
def test_max_memory_per_child_replaces_the_process_after_the_task_that_grew(
        app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--max-memory-per-child", "150", *FAST)
    first = tasks.pid_count.delay("m").get(timeout=20)
    grew = tasks.pid_count.delay("m", 160)
    assert grew.get(timeout=20) == first  # it ran in the same process
    out = wait_until(lambda: "recycled with RSS" in (o := w.output()) and o,
                     message="the recycle line")
    assert "above --max-memory-per-child 150 (after 2 tasks); its successor" in out, out
    after = [tasks.pid_count.delay("m").get(timeout=20) for _ in range(3)]
    assert first not in after and len(set(after)) == 1  # one new, lean process
    assert tasks.count_of("m") == 5
    assert grew.status == "SUCCESS" and grew.info["deliveries"] == 1
    assert w.output().count("recycled") == 1
    _no_crash(w.output())
    assert w.stop() == 0


def test_prefetched_entries_of_a_recycled_process_go_back_uncharged(
        vapp: StreamQ, start_worker: Any) -> None:
    """A process that read a batch and grew past its limit at the batch's first task:
    the rest of the batch runs once, in its successor, with no delivery charged."""
    warm = tasks.pid_count.delay("p")
    grew = tasks.pid_count.delay("p", 160)
    rest = tasks.pid_count.map(["p"] * 10)
    # Started after the enqueue: the first read takes one entry (the warm one), the
    # second the rest in one batch, behind the task that grows.
    w = start_worker(vapp.settings.url, "-c", "1", "--max-memory-per-child", "150", *FAST)
    old = warm.get(timeout=20)
    assert grew.get(timeout=20) == old
    pids = {r.get(timeout=20) for r in rest}
    assert old not in pids and len(pids) == 1
    assert tasks.count_of("p") == 12  # nothing lost, nothing run twice
    assert all(r.info["deliveries"] == 1 for r in [warm, grew, *rest])
    out = w.output()
    assert "Handed back" not in out  # not by the stuck-task path, but by the recycle
    assert out.count("recycled with RSS") == 1, out
    # The second read took the rest too (unless the warm task ran for over 5 ms).
    back = re.search(r"\(after 2 tasks\), handing back (\d+) unstarted message\(s\); its "
                     r"successor takes over\.", out)
    assert back and 1 <= int(back.group(1)) <= 10, out
    _no_crash(out)
    assert w.stop() == 0


def test_rss_is_vm_rss_read_afresh_each_time() -> None:
    rss = Rss()
    before = rss.kb() or 0
    assert abs(before - (vm_rss_kb() or 0)) < 2048
    grown = bytearray(64 * 1024 * 1024)
    assert (rss.kb() or 0) - before > 60 * 1024  # the open file is read again, not cached
    assert abs((rss.kb() or 0) - (vm_rss_kb() or 0)) < 2048
    del grown


def test_checks_cost_nothing_without_limits() -> None:
    r = Recycling()
    assert r.until_check(0) > 10**15 and r.read_cap(5, 100) == 100 and r.due(10**6) is None
    r = Recycling(max_tasks=10)
    assert r.until_check(3) == 7 and r.read_cap(3, 100) == 7 and r.due(9) is None
    assert r.due(10) == "after 10 tasks (--max-tasks-per-child 10)"
    assert Recycling(max_memory_mb=10**6).until_check(0) == 1


def test_a_memory_limit_below_a_fresh_process_is_said_at_start() -> None:
    warning = startup_warning(Recycling(max_memory_mb=1))
    assert warning and "every process will be replaced after each task" in warning
    assert startup_warning(Recycling(max_memory_mb=10**6)) is None
    assert startup_warning(Recycling(max_tasks=5)) is None


def test_limits_from_the_environment() -> None:
    s = Settings.from_env({"STREAMQ_MAX_TASKS_PER_CHILD": "100",
                           "STREAMQ_MAX_MEMORY_PER_CHILD": "500"})
    assert (s.max_tasks_per_child, s.max_memory_per_child) == (100, 500)
    with pytest.raises(ConfigurationError, match="max_tasks_per_child"):
        Settings(max_tasks_per_child=-1)
