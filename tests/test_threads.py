"""Tasks in threads (issue 13): ``--threads N`` runs up to N tasks at once in each
process, with every delivery guarantee of one thread: outcomes written per task,
nothing stranded behind busy threads, crashes charging only the tasks that ran, hard
limits replacing the process and soft limits raised inside the task."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis

from streamq import StreamQ, TaskFailed
from streamq.base import keys
from tests import tasks
from tests.conftest import wait_until

FAST = ("--heartbeat", "0.2")


def _overlap(app: StreamQ, rclient: redis.Redis, key: str) -> tuple[int, set[bytes]]:
    tag = f"{app.settings.namespace}:overlap:{{{key}}}"
    return int(rclient.get(f"{tag}:max") or 0), rclient.smembers(f"{tag}:pids")


def test_one_process_runs_as_many_tasks_at_once_as_it_has_threads(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    """STREAMQ_THREADS=4 (as --threads 4): four at once, each with its own
    ``current_task()``."""
    w = start_worker(app.settings.url, "-c", "1", *FAST, env={"STREAMQ_THREADS": "4"})
    started = time.monotonic()
    handles = tasks.overlap.map([("four", 0.3)] * 12)
    pids = {h.get(timeout=20) for h in handles}
    took = time.monotonic() - started
    most, _ = _overlap(app, rclient, "four")
    assert most == 4, most  # never more than the threads, and all of them used
    assert len(pids) == 1 and took < 12 * 0.3 / 2, took  # three rounds of four, not twelve
    assert all(h.status == "SUCCESS" for h in handles)
    contexts = tasks.context.map([()] * 16)
    assert [h.get(timeout=20)["id"] for h in contexts] == [h.id for h in contexts]
    assert w.stop() == 0


def test_the_outcomes_of_every_thread_leave_together(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    """Outcomes of tasks that finished in several threads are written in one script
    call with the next read, not one call per task: the outcome script's XACK runs far
    fewer times than there are tasks."""
    w = start_worker(app.settings.url, "-c", "1", "--threads", "8", *FAST)
    assert tasks.add.delay(1, 1).get(timeout=10) == 2
    rclient.config_resetstat()
    handles = tasks.overlap.map([("together", 0.2)] * 64)
    for h in handles:
        h.get(timeout=30)
    stats = rclient.info("commandstats")
    acks = int(stats.get("cmdstat_xack", {}).get("calls", 0))
    assert 1 <= acks <= len(handles) // 2, acks  # 8-12 here: one per round of eight
    assert w.stop() == 0


def test_threads_read_only_what_they_can_start(app: StreamQ, rclient: redis.Redis,
                                               start_worker: Any) -> None:
    """Two processes of two threads, eight slow tasks: each process takes what its
    threads can run, so both processes work and nothing waits behind a busy one."""
    w = start_worker(app.settings.url, "-c", "2", "--threads", "2", *FAST)
    handles = tasks.overlap.map([("spread", 0.4)] * 8)
    for h in handles:
        h.get(timeout=20)
    most, pids = _overlap(app, rclient, "spread")
    assert most == 4 and len(pids) == 2, (most, pids)
    assert w.stop() == 0


def test_a_crash_charges_only_the_tasks_that_were_running(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    """SIGKILL of a process with three tasks running and more read: the three run
    again with one more delivery each, alone; everything completes exactly once."""
    w = start_worker(app.settings.url, "-c", "1", "--threads", "3", *FAST)
    slow = [tasks.sleep_then_count.delay(f"crash-{i}", 1.0) for i in range(3)]
    wait_until(lambda: [tasks.count_of(f"crash-{i}") for i in range(3)] == [1, 1, 1],
               timeout=15, message="three tasks running at once")
    more = [tasks.count.delay("crash-more") for _ in range(6)]  # queued behind them
    (child,) = w.children()
    os.kill(child, signal.SIGKILL)
    for i, h in enumerate(slow):
        assert h.get(timeout=30) == 2  # the killed run, then the one that finished
        assert tasks.count_of(f"crash-{i}") == 2
        assert h.info["deliveries"] == 2
    for h in more:
        h.get(timeout=30)
    assert tasks.count_of("crash-more") == 6  # not in flight: each ran once
    assert "died" in w.output()
    assert w.stop() == 0


def test_stopping_waits_for_the_tasks_in_threads(app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--threads", "3", *FAST)
    handles = [tasks.sleep_then_count.delay(f"stop-{i}", 0.6) for i in range(3)]
    wait_until(lambda: all(h.status == "STARTED" for h in handles), timeout=15,
               message="started")
    assert w.stop() == 0
    assert [h.status for h in handles] == ["SUCCESS"] * 3
    assert [tasks.count_of(f"stop-{i}") for i in range(3)] == [1, 1, 1]


# The worker's subject: a signal in the main thread (1) or an exception put into a task
# thread (3), on Valkey; the threads again on Redis 7.
@pytest.mark.parametrize(("server", "threads"), [("valkey", "1"), ("valkey", "3"),
                                                 ("redis", "3")], indirect=["server"])
def test_a_soft_limit_raises_inside_the_task(app: StreamQ, start_worker: Any,
                                             threads: str) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--threads", threads, *FAST)
    soft = tasks.soft_limited.delay("soft", 10.0)
    fine = tasks.soft_limited.delay("fine", 0.05)
    assert fine.get(timeout=15) == "finished"
    assert soft.get(timeout=15) == "cleaned up"  # the task caught it and returned
    assert tasks.count_of("soft") == 1
    uncaught = tasks.soft_unhandled.delay(5.0)
    with pytest.raises(TaskFailed) as caught:
        uncaught.get(timeout=15)
    assert caught.value.exc_type == "streamq.base.errors.SoftTimeLimitExceeded"
    assert "soft time limit of 0.3s" in caught.value.exc_message
    assert tasks.add.delay(1, 2).get(timeout=10) == 3  # the process goes on
    assert "died" not in w.output()
    assert w.stop() == 0


def test_a_hard_limit_in_a_thread_replaces_the_process_and_reruns_the_others(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", "--threads", "3", *FAST)
    others = [tasks.sleep_then_count.delay(f"other-{i}", 2.0) for i in range(2)]
    wait_until(lambda: all(h.status == "STARTED" for h in others), timeout=15,
               message="others started")
    stuck = tasks.too_slow.delay("stuck", 30.0)  # timeout=1.0, max_retries=1
    with pytest.raises(TaskFailed) as caught:
        stuck.get(timeout=30)
    assert caught.value.exc_type == "TimeLimitExceeded"
    for i, h in enumerate(others):
        # Killed and run again: once per replacement (the stuck task has two attempts).
        assert h.get(timeout=30) == tasks.count_of(f"other-{i}") in (2, 3)
        assert h.info["retries"] == 0  # handed back, not charged an attempt
    assert "exceeded its time limit" in w.output()
    stream = keys.stream(app.settings.namespace, "default")
    wait_until(lambda: not rclient.xpending(stream, keys.GROUP)["pending"], timeout=10,
               message="nothing pending")
    assert w.stop() == 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_process_whose_threads_are_all_busy_waits_without_spinning(
        app: StreamQ, start_worker: Any) -> None:
    from tests import sync_tasks

    producer = StreamQ(app.settings.url, namespace=app.settings.namespace)
    w = start_worker(app.settings.url, "-c", "1", "--threads", "2", *FAST,
                     module="tests.sync_tasks")
    handles = [producer.send_by_name(sync_tasks.nap.name, [1.5]) for _ in range(2)]
    wait_until(lambda: all(h.status == "STARTED" for h in handles), timeout=15,
               message="both threads busy")
    (child,) = w.children()
    before = _cpu_s(child)
    time.sleep(1.0)
    used = _cpu_s(child) - before
    assert used < 0.15, f"{used:.2f}s of CPU in 1s while every thread slept"
    assert [h.get(timeout=15) for h in handles] == [1.5, 1.5]
    assert w.stop() == 0
    producer.close()


def test_recycling_counts_the_tasks_of_every_thread(app: StreamQ, start_worker: Any) -> None:
    from collections import Counter

    w = start_worker(app.settings.url, "-c", "1", "--threads", "3",
                     "--max-tasks-per-child", "10", *FAST)
    handles = tasks.pid_count.map(["recycled"] * 35)
    pids = Counter(h.get(timeout=30) for h in handles)
    assert sorted(pids.values()) == [5, 10, 10, 10], pids
    assert tasks.count_of("recycled") == 35  # each ran once
    assert w.stop() == 0


def test_recycling_by_memory_with_threads_runs_every_task_once(
        vapp: StreamQ, start_worker: Any) -> None:
    """A task that keeps 160 MB alive, among others running in the same process's
    threads: the process finishes what it started, hands back what it read, and is
    replaced; every task runs exactly once, none charged a second delivery."""
    from collections import Counter

    w = start_worker(vapp.settings.url, "-c", "1", "--threads", "3",
                     "--max-memory-per-child", "150", *FAST)
    first = tasks.pid_count.delay("mem").get(timeout=20)
    before = tasks.pid_count.map(["mem"] * 6)
    grew = tasks.pid_count.delay("mem", 160)
    behind = tasks.pid_count.map(["mem"] * 12)  # read in the old process or the new one
    assert {h.get(timeout=30) for h in before} == {first}
    assert grew.get(timeout=30) == first  # it ran in the same process, then it was replaced
    pids = Counter(h.get(timeout=30) for h in behind)
    after = [tasks.pid_count.delay("mem").get(timeout=20) for _ in range(3)]
    assert first not in after and len(set(after)) == 1  # one new, lean process
    assert set(pids) <= {first, after[0]}, pids
    assert tasks.count_of("mem") == 1 + 6 + 1 + 12 + 3  # each ran once: none lost or doubled
    assert all(h.info["deliveries"] == 1 for h in [*before, grew, *behind])
    out = wait_until(lambda: "recycled with RSS" in (o := w.output()) and o,
                     message="the recycle line")
    assert out.count("recycled") == 1 and "died" not in out, out
    assert w.stop() == 0


def test_a_long_task_in_a_busy_thread_pool_keeps_its_lease(app: StreamQ,
                                                           start_worker: Any) -> None:
    """Leases are renewed for every task a process runs in threads: a second worker,
    which would reclaim anything idle for a second, never takes them."""
    args = ("-c", "1", "--threads", "3", "--claim-after", "1", *FAST)
    first = start_worker(app.settings.url, *args)
    long = [tasks.sleep_then_count.delay(f"lease-{i}", 2.5) for i in range(3)]
    wait_until(lambda: [tasks.count_of(f"lease-{i}") for i in range(3)] == [1, 1, 1],
               timeout=15, message="all three running")
    second = start_worker(app.settings.url, *args)
    assert [h.get(timeout=20) for h in long] == [1, 1, 1]  # each ran once
    assert [tasks.count_of(f"lease-{i}") for i in range(3)] == [1, 1, 1]
    assert "Reclaimed" not in second.output()
    assert first.stop() == 0 and second.stop() == 0
