"""Reliability under attack (issue 10): each case once lost, doubled or stalled work.

Counters live in the server, so executions are counted exactly across processes."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis

from streamq import StreamQ
from streamq.base import keys
from streamq.data.record import Status
from streamq.server.recovery import Recovery
from streamq.worker.consumer import Consumer
from tests import tasks
from tests.conftest import wait_until

FAST = ("--heartbeat", "0.2", "--claim-after", "0.6")


def _stream(app: StreamQ) -> str:
    return keys.stream(app.settings.namespace, "default")


def test_a_fast_crash_charges_only_the_running_entry(app: StreamQ, start_worker: Any) -> None:
    """A task that kills its process at once, ahead of 50 others on one process: the
    others used to be charged a delivery at every crash and all went to dead letters
    without running. Only the poison message is charged; the 50 all run, once."""
    poison = tasks.poison.delay("fast-crash")  # max_deliveries=3, kills its process
    rest = [tasks.count.delay("fast-crash-rest") for _ in range(50)]
    w = start_worker(app.settings.url, "-c", "1", *FAST)
    assert sorted(r.get(timeout=30) for r in rest) == list(range(1, 51))
    wait_until(lambda: poison.status == Status.DEAD, timeout=30, message="poison dead")
    assert tasks.count_of("fast-crash") == 3  # charged on each of its own 3 runs only
    assert tasks.count_of("fast-crash-rest") == 50
    assert {r.info["deliveries"] for r in rest} == {1}
    assert w.stop() == 0


def test_an_acknowledgement_never_deletes_an_entry_another_consumer_reclaimed(
        app: StreamQ, rclient: redis.Redis) -> None:
    """A worker presumed dead finishes late: the entry was reclaimed by another, which
    is still running it. The late success must not delete that entry."""
    link = app.server
    link.broker.ensure_group("default")
    res = tasks.add.delay(20, 22)
    slow = Consumer(app, ["default"], "host-a:1:aaaa-0", block_ms=50)
    (d,) = link.broker.read(slow.name, ["default"], 10, None)
    time.sleep(0.1)  # idle long enough to be reclaimed (no claim waits less than 50 ms)
    assert rclient.xclaim(_stream(app), keys.GROUP, "host-b:1:bbbb-0", 50, [d.entry_id])
    # host-a runs what it read, and writes its outcome with its ack.
    outcome = slow.executor.run(slow.executor.prepare(d))  # type: ignore[arg-type]
    link.transport.run(slow.writer.pack([outcome]))
    assert res.get(timeout=5) == 42  # the record is written: the task did run
    owner = rclient.xpending_range(_stream(app), keys.GROUP, "-", "+", 10)
    assert [(p["message_id"].decode(), p["consumer"]) for p in owner] == \
        [(d.entry_id, b"host-b:1:bbbb-0")]
    assert rclient.xlen(_stream(app)) == 1  # still there for host-b to finish


def test_a_foreign_entry_on_the_claim_path_goes_to_dead_letters(
        app: StreamQ, rclient: redis.Redis) -> None:
    """Read normally, an entry written by something else is dead-lettered; reclaimed
    from a dead consumer it used to be acknowledged and deleted without trace."""
    link = app.server
    link.broker.ensure_group("default")
    rclient.xadd(_stream(app), {"hello": "world"})
    assert len(link.broker.read("ghost:1:gggg-0", ["default"], 10, None)) == 1  # then dies
    c = Consumer(app, ["default"], "host-r:1:rrrr-0", block_ms=50)
    got = Recovery(link.transport, link.broker, app.settings, c.name, 100).autoclaim(
        "default", 0)
    assert len(got) == 1 and got[0].raw is not None and b"hello" in got[0].raw
    c.held.add(got)
    c.run_once()
    c.stop()
    (letter,) = app.dead.list("default")
    assert "undecodable message" in letter.reason and b"hello" in letter.raw
    assert rclient.xlen(_stream(app)) == 0


def test_a_retry_outlives_its_record_ttl(app: StreamQ) -> None:
    """With result_ttl shorter than a retry's countdown the record used to expire while
    the retry waited (get() then said "never enqueued")."""
    short = StreamQ(app.settings.url, namespace=app.settings.namespace, result_ttl=1)
    later = short.task(name=tasks.retry_later.name, max_retries=1)(tasks.retry_later.fn)
    try:
        res = later.delay("ttl-retry", 3.0)
        c = Consumer(short, ["default"], "h:1:aaaa-0", block_ms=50)
        c.start(housekeeping=False)
        c.run_once()
        c.stop()
        assert res.status == Status.RETRY
        ttl = short.server.connection.client.ttl(
            keys.record(short.settings.namespace, "default", res.id))
        assert ttl >= 3  # result_ttl (1 s) plus the 3 s wait until due
        time.sleep(1.5)  # past result_ttl: the record must still be there
        assert res.status == Status.RETRY
    finally:
        short.close()


def test_orphans_of_a_killed_supervisor_stop_and_keep_time_limits(
        app: StreamQ, start_worker: Any) -> None:
    """After kill -9 of the supervisor its processes used to go on consuming, with no
    time limits. They stop reading, and a task past its timeout ends its process."""
    w = start_worker(app.settings.url, "-c", "1", *FAST)
    (child,) = w.children()
    res = tasks.too_slow.delay("orphan", 8.0)  # timeout=1.0
    wait_until(lambda: tasks.count_of("orphan") == 1, message="task started")
    os.kill(w.pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_until(lambda: not _alive(child), timeout=6, message="the orphan to exit")
    assert time.monotonic() - t0 < 4  # its 1 s limit, not the task's 8 s
    later = tasks.add.delay(1, 1)
    time.sleep(0.5)
    assert later.status == Status.PENDING  # nobody consumes it now
    assert res.status != Status.SUCCESS
    w.proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_full_server_is_drained_and_nothing_is_acknowledged_without_its_record(
        app: StreamQ, rclient: redis.Redis, start_worker: Any) -> None:
    """At maxmemory (noeviction) worker starts used to die in XGROUP CREATE and running
    workers on their refused writes, and a refused record write could leave its entry
    acknowledged with the record PENDING. Now the server is drained, every task ends
    SUCCESS, and no process dies."""
    handles = tasks.echo.map(["x" * 2000] * 1500)
    app.server.broker.ensure_group("default")
    used = int(rclient.info("memory")["used_memory"])
    rclient.config_set("maxmemory", used - 200_000)
    try:
        with __import__("pytest").raises(Exception, match="maxmemory"):
            rclient.set(f"{app.settings.namespace}:probe", "x")  # the server is full
        w = start_worker(app.settings.url, "-c", "1", *FAST)
        wait_until(lambda: rclient.xlen(_stream(app)) == 0, timeout=60,
                   message=f"the drain; output:\n{w.output()}")
    finally:
        rclient.config_set("maxmemory", 0)
    assert {h.status for h in handles} == {Status.SUCCESS}
    assert "died with exit code" not in w.output()
    assert w.stop() == 0


def test_a_task_holding_the_gil_is_not_stolen(app: StreamQ, start_worker: Any) -> None:
    """A C call that keeps the interpreter lock stops its process's own heartbeats: it
    used to be reclaimed and run again (4 runs of one 8-second task). The supervisor,
    which runs no task code, renews the leases and the registration."""
    a = start_worker(app.settings.url, "-c", "1", *FAST)
    res = tasks.hold_the_gil.delay("gil", 3)
    wait_until(lambda: tasks.count_of("gil") == 1, message="the task to start")
    b = start_worker(app.settings.url, "-c", "1", *FAST)  # idle, reclaims what it can
    assert res.get(timeout=20) == 1
    assert tasks.count_of("gil") == 1
    assert "Reclaimed" not in a.output() + b.output()
    assert a.stop() == 0 and b.stop() == 0


def test_workers_are_judged_by_their_own_heartbeat(app: StreamQ, start_worker: Any) -> None:
    """A worker with --heartbeat 0.2 took a default worker (5 s heartbeats) for dead
    after 0.6 s and ran its live task again."""
    slow = start_worker(app.settings.url, "-c", "1", "--heartbeat", "2",
                        env={"STREAMQ_HEARTBEAT_S": "2"})
    res = tasks.sleep_then_count.delay("own-hb", 4.0)
    wait_until(lambda: tasks.count_of("own-hb") == 1, message="the task to start")
    fast = start_worker(app.settings.url, "-c", "1", *FAST)
    assert res.get(timeout=20) == 1
    assert tasks.count_of("own-hb") == 1
    assert "Reclaimed" not in fast.output()
    assert slow.stop() == 0 and fast.stop() == 0


def test_three_heartbeats_must_fit_in_the_claim_threshold() -> None:
    import pytest

    from streamq import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least three heartbeats"):
        StreamQ(heartbeat_s=1.0, claim_after_s=2.0)
    assert StreamQ(heartbeat_s=1.0, claim_after_s=3.0).settings.claim_after_s == 3.0


def test_worker_ids_do_not_collide_across_containers() -> None:
    """Containers that share a host name and all run as pid 1 used to draw a worker id
    from only 16 random bits."""
    from streamq.base.ids import new_worker_id, parse_worker_id

    ids = {str(new_worker_id()) for _ in range(20_000)}
    assert len(ids) == 20_000
    token = parse_worker_id(next(iter(ids)))
    assert token is not None and len(token.token) * 4 >= 64
