"""Reliable delivery, proven by fault injection: real servers, real worker processes,
real signals, and executions counted exactly (counters in the server)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from streamq import StreamQ, TaskFailed
from streamq.base import keys
from streamq.data.message import Message
from tests import tasks
from tests.conftest import wait_until
from tests.servers import ServerProcess, on_shards_too

FAST = ("--heartbeat", "0.2", "--log-level", "INFO")


def _stream(app: StreamQ, queue: str = "default") -> str:
    return keys.stream(app.settings.namespace, queue)


@on_shards_too
def test_task_that_kills_its_process_completes_on_second_delivery(app: StreamQ,
                                                                  start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", *FAST)
    before = set(w.children())
    res = tasks.die_on_first_delivery.delay("k1")
    assert res.get(timeout=30) == 2
    assert tasks.count_of("k1") == 2
    assert res.info["deliveries"] == 2
    assert set(w.children()) != before  # the killed process was replaced
    assert "died with exit code" in w.output()
    assert w.stop() == 0


def test_sigkill_of_whole_worker_loses_nothing(app: StreamQ, start_worker: Any) -> None:
    results = tasks.sleep_then_count.map([(f"w{i}", 0.01) for i in range(500)])
    w1 = start_worker(app.settings.url, "-c", "2", *FAST)
    wait_until(lambda: sum(r.status == "SUCCESS" for r in results[:100]) >= 20, timeout=30,
               message="some tasks done")
    w1.kill_all()  # the whole host dies, with messages in flight and prefetched
    client = app.server.connection.client
    pending = client.xpending_range(_stream(app), keys.GROUP, "-", "+", 1000)
    assert pending
    # The only messages allowed to run twice: those the dead host held unacknowledged.
    held = set()
    for p in pending:
        ((_, fields),) = client.xrange(_stream(app), p["message_id"], p["message_id"])
        held.add(Message.decode(fields[b"m"]).id)
    w2 = start_worker(app.settings.url, "-c", "2", *FAST)
    values = [r.get(timeout=60) for r in results]
    assert all(v >= 1 for v in values)
    counts = [tasks.count_of(f"w{i}") for i in range(500)]
    assert min(counts) == 1 and max(counts) <= 2
    twice = {results[i].id for i, n in enumerate(counts) if n == 2}
    assert twice <= held, f"ran twice without having been pending: {twice - held}"
    assert "Reclaimed" in w2.output()
    assert w2.stop() == 0


@on_shards_too
def test_long_task_is_never_stolen_while_its_worker_lives(app: StreamQ,
                                                          start_worker: Any) -> None:
    args = ("-c", "1", "--claim-after", "0.6", *FAST)
    w1 = start_worker(app.settings.url, *args)
    w2 = start_worker(app.settings.url, *args)
    res = tasks.sleep_then_count.delay("long", 3.0)  # 5x the claim threshold
    assert res.get(timeout=30) == 1
    time.sleep(0.5)
    assert tasks.count_of("long") == 1
    assert "Reclaimed" not in w1.output() + w2.output()
    assert w1.stop() == 0 and w2.stop() == 0


@on_shards_too
def test_heartbeat_never_steals_back_a_reclaimed_entry(app: StreamQ) -> None:
    from streamq.server.recovery import Recovery

    link = app.server
    broker = link.broker
    broker.ensure_group("default")
    tasks.add.delay(1, 2)
    got = broker.read("host-a:1:aaaa-0", ["default"], 10, None)
    assert len(got) == 1
    entry = got[0].entry_id
    recovery = Recovery(link.transport, broker, app.settings, "host-a:1:aaaa-0", 100)
    assert recovery.heartbeat("default", [entry]) == []
    client = link.connection.client
    client.xclaim(_stream(app), keys.GROUP, "host-b:1:bbbb-0", 0, [entry])
    assert recovery.heartbeat("default", [entry]) == [entry]
    owner = client.xpending_range(_stream(app), keys.GROUP, entry, entry, 1)
    assert owner[0]["consumer"] == b"host-b:1:bbbb-0"


@on_shards_too
def test_own_orphaned_entries_are_recovered(app: StreamQ) -> None:
    """Entries delivered to this consumer whose reply was lost (e.g. the connection
    dropped mid-read) are pending for it but unknown to it; it takes them back."""
    from streamq.worker.consumer import Consumer

    tasks.app.configure(heartbeat_s=0.1)
    results = tasks.add.map([(i, 0) for i in range(5)])
    name = "host-o:1:oooo-0"
    c = Consumer(app, ["default"], name, block_ms=50)
    c.start(housekeeping=False)
    lost = app.server.broker.read(name, ["default"], 100, None)  # delivered, reply "lost"
    assert len(lost) == 5
    time.sleep(0.3)
    c._next_reclaim = 0.0
    c.run_once()
    c.stop()
    assert [r.get(timeout=5) for r in results] == list(range(5))
    assert all(r.info["deliveries"] == 2 for r in results)


def test_outcomes_are_never_lost_to_a_concurrent_flush(app: StreamQ) -> None:
    """The housekeeping thread flushes outcomes while a slow task runs; the slow
    task's own outcome must still be written (and the task run only once)."""
    from streamq.worker.consumer import Consumer

    slow = []
    for i in range(20):
        tasks.add.map([(i, 0), (i, 1)])
        slow.append(tasks.sleep_then_count.delay(f"race{i}", 0.05))
    c = Consumer(app, ["default"], "host-r:1:rrrr-0", block_ms=50)
    c.start()  # with the housekeeping thread
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(r.status != "SUCCESS" for r in slow):
            c.run_once()
    finally:
        c.stop()
    assert [r.status for r in slow] == ["SUCCESS"] * 20
    assert [tasks.count_of(f"race{i}") for i in range(20)] == [1] * 20


@on_shards_too
def test_dead_host_messages_are_autoclaimed_and_consumer_removed(app: StreamQ,
                                                                 start_worker: Any) -> None:
    results = tasks.add.map([(i, 1) for i in range(30)])
    app.server.broker.ensure_group("default")
    ghost = "ghost-host:999:dead-0"
    got = app.server.broker.read(ghost, ["default"], 100, None)  # read, then "die"
    assert len(got) == 30
    w = start_worker(app.settings.url, "-c", "1", "--claim-after", "1", *FAST)
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(30)]
    assert all(r.info["deliveries"] == 2 for r in results)

    def ghost_gone() -> bool:
        names = [c["name"] for c in app.server.connection.client.xinfo_consumers(_stream(app),
                                                                        keys.GROUP)]
        return ghost.encode() not in names

    wait_until(ghost_gone, timeout=15, message="dead consumer removed")
    assert w.stop() == 0


@on_shards_too
def test_poison_message_goes_dead_while_1000_others_complete(app: StreamQ,
                                                            start_worker: Any) -> None:
    poison = tasks.poison.delay("p")
    others = tasks.add.map([(i, i) for i in range(1000)])
    w = start_worker(app.settings.url, "-c", "2", *FAST)
    assert [r.get(timeout=60) for r in others] == [2 * i for i in range(1000)]
    wait_until(lambda: poison.status == "DEAD", timeout=30, message="poison dead")
    assert tasks.count_of("p") == 3  # max_deliveries=3: run exactly three times
    with pytest.raises(TaskFailed, match="max_deliveries=3"):
        poison.get(timeout=1)
    (letter,) = app.dead.list("default")
    assert letter.task == "tests.tasks.poison" and letter.task_id == poison.id
    assert "delivered 3 times" in letter.reason and letter.deliveries == 4
    assert w.stop() == 0


@on_shards_too
def test_retries_with_backoff_reach_success_or_failure(app: StreamQ,
                                                       start_worker: Any) -> None:
    ok = tasks.flaky.delay("f-ok", 2)  # fails twice, then succeeds (max_retries=3)
    bad = tasks.flaky.delay("f-bad", 10)  # never gets there
    explicit = tasks.explicit_retry.delay("f-ex")
    not_listed = tasks.only_keyerror_retries.delay("f-val", "ValueError")
    listed = tasks.only_keyerror_retries.delay("f-key", "KeyError")
    w = start_worker(app.settings.url, "-c", "2", *FAST)
    assert ok.get(timeout=30) == 3
    assert ok.info["retries"] == 2 and tasks.count_of("f-ok") == 3
    assert explicit.get(timeout=30) == 3
    with pytest.raises(TaskFailed, match="failure 4 of 10"):
        bad.get(timeout=30)
    assert tasks.count_of("f-bad") == 4 and bad.status == "FAILURE"
    assert bad.info["retries"] == 3
    with pytest.raises(TaskFailed):
        not_listed.get(timeout=30)
    assert tasks.count_of("f-val") == 1  # ValueError is not in autoretry_for
    with pytest.raises(TaskFailed):
        listed.get(timeout=30)
    assert tasks.count_of("f-key") == 2
    reasons = {d.task_id: d for d in app.dead.list("default")}
    assert "failed after 4 attempt(s): ValueError: failure 4 of 10" in reasons[bad.id].reason
    assert "Traceback" in reasons[bad.id].reason and reasons[bad.id].attempts == 4
    assert {bad.id, not_listed.id, listed.id} == set(reasons)
    assert "Retrying task tests.tasks.flaky" in w.output()
    assert w.stop() == 0


def test_retry_record_shows_attempts_and_last_error(app: StreamQ) -> None:
    from tests.test_api import drain

    res = tasks.flaky.apply_async(("f-rec", 1))
    drain(app)
    info = res.info
    assert info["status"] == "RETRY" and info["retries"] == 1
    assert info["exc_type"] == "ValueError" and "failure 1 of 1" in info["exc_message"]
    client = app.server.connection.client
    assert client.zscore(keys.delayed(app.settings.namespace, "default"), res.id)
    assert app.server.connection.client.xlen(_stream(app)) == 0  # moved atomically, not duplicated


@on_shards_too
def test_200_delayed_tasks_start_on_time(app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "2", *FAST)
    t0 = time.time()
    results = [tasks.record_start.apply_async(("delayed",), countdown=0.5 + (i % 40) * 0.05)
               for i in range(200)]
    assert all(r.status in ("SCHEDULED", "STARTED", "SUCCESS") for r in results)
    for r in results:
        r.get(timeout=30)
    assert time.time() - t0 < 20
    client = app.server.connection.client
    starts = dict(x.decode().split() for x in
                  client.lrange(f"{app.settings.namespace}:starts:delayed", 0, -1))
    assert len(starts) == 200
    lateness = []
    for r in results:
        due = r.info["eta_ms"]
        started = float(starts[r.id])
        assert started >= due, f"{r.id} started {due - started:.1f} ms early"
        lateness.append(started - due)
    lateness.sort()
    assert lateness[-1] <= 250, f"latest start {lateness[-1]:.0f} ms after due"
    assert w.stop() == 0


@on_shards_too
def test_concurrent_promoters_never_duplicate(app: StreamQ) -> None:
    import threading

    results = [tasks.add.apply_async((i, 0), countdown=0.2) for i in range(300)]
    time.sleep(0.3)
    brokers = [StreamQ(app.settings.url, namespace=app.settings.namespace).server
               for _ in range(4)]
    moved: list[int] = []

    def promote(b: Any) -> None:
        for _ in range(20):
            moved.append(b.delayed.promote("default", int(time.time() * 1000), limit=25)[0])

    threads = [threading.Thread(target=promote, args=(b,)) for b in brokers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(moved) == 300
    assert app.server.connection.client.xlen(_stream(app)) == 300
    ids = {Message.decode(f[b"m"]).id for _, f in app.server.connection.client.xrange(_stream(app))}
    assert ids == {r.id for r in results}
    for b in brokers:
        b.close()


@on_shards_too
def test_time_limit_kills_retries_then_fails(app: StreamQ, start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1", *FAST)
    before = set(w.children())
    res = tasks.too_slow.delay("slow", 30.0)  # timeout=1, max_retries=1
    ok = tasks.add.delay(1, 1)
    with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
        res.get(timeout=40)
    assert tasks.count_of("slow") == 2  # first attempt and its one retry
    assert ok.get(timeout=10) == 2
    assert res.info["retries"] == 1
    assert "exceeded its time limit" in w.output()
    assert not (set(w.children()) & before)
    assert w.stop() == 0


def test_sigterm_grace_expired_task_is_handed_back_uncharged_and_recovered(
        app: StreamQ, start_worker: Any) -> None:
    """A deploy whose grace period a long task outlasts: the killed task goes back to
    its queue without a delivery charged (six deploys used to make it "poison")."""
    w1 = start_worker(app.settings.url, "-c", "1", "--grace", "0.5", *FAST)
    res = tasks.sleep_then_count.delay("grace", 3.0)
    wait_until(lambda: tasks.count_of("grace") == 1, message="task started")
    w1.signal(signal.SIGTERM)
    assert w1.proc.wait(20) == 0
    assert res.status != "SUCCESS"
    client = app.server.connection.client
    assert client.xpending(_stream(app), keys.GROUP)["pending"] == 0
    assert client.xlen(_stream(app)) == 1  # back in the stream, as a new entry
    assert "handed their 1 unfinished message(s) back" in w1.output()
    w2 = start_worker(app.settings.url, "-c", "1", *FAST)
    assert res.get(timeout=30) == 2
    assert tasks.count_of("grace") == 2
    assert res.info["deliveries"] == 1
    assert w2.stop() == 0


def test_second_sigint_exits_at_once_losing_nothing(app: StreamQ, start_worker: Any) -> None:
    w1 = start_worker(app.settings.url, "-c", "1", *FAST)
    res = tasks.sleep_then_count.delay("int", 20.0)
    wait_until(lambda: tasks.count_of("int") == 1, message="task started")
    t0 = time.monotonic()
    w1.signal(signal.SIGINT)
    time.sleep(0.3)
    w1.signal(signal.SIGINT)
    w1.proc.wait(10)
    assert time.monotonic() - t0 < 5
    client = app.server.connection.client
    assert client.xpending(_stream(app), keys.GROUP)["pending"] == 0
    assert client.xlen(_stream(app)) == 1  # handed back uncharged, nothing lost
    tasks.app.configure(heartbeat_s=0.2)
    w2 = start_worker(app.settings.url, "-c", "1", *FAST)
    wait_until(lambda: tasks.count_of("int") == 2, timeout=20, message="task re-run")
    assert res.status in ("STARTED", "PENDING", "SUCCESS")
    w2.kill_all()


@pytest.mark.parametrize("kind", ["valkey", "redis"])
def test_server_restart_with_aof_loses_nothing(kind: str, tmp_path: Path, namespace: str,
                                               start_worker: Any) -> None:
    from tests.servers import require_kind

    require_kind(kind)
    srv = ServerProcess(kind, tmp_path / "srv", appendonly=True).start()
    try:
        tasks.app.configure(url=srv.url, namespace=namespace)
        results = tasks.nap.map([(0.01, i) for i in range(400)])
        w = start_worker(srv.url, "-c", "2", *FAST)
        wait_until(lambda: results[20].status == "SUCCESS", timeout=30, message="progress")
        tasks.app.close()
        srv.stop()  # down long enough to outlast the client's own quick retries
        time.sleep(3)
        srv.start()
        assert results[399].status in ("PENDING", "STARTED")  # the outage was mid-run
        assert [r.get(timeout=60) for r in results] == list(range(400))
        assert "Server unavailable" in w.output()
        assert w.stop() == 0
    finally:
        tasks.app.close()
        srv.stop()


def test_server_restart_without_persistence_recreates_group(tmp_path: Path, namespace: str,
                                                           start_worker: Any) -> None:
    srv = ServerProcess("valkey", tmp_path / "srv", appendonly=False).start()
    try:
        tasks.app.configure(url=srv.url, namespace=namespace)
        w = start_worker(srv.url, "-c", "1", *FAST)
        assert tasks.add.delay(1, 2).get(timeout=20) == 3
        tasks.app.close()
        srv.restart()  # every key is gone, the consumer group too
        res = wait_until(lambda: _try_enqueue(), timeout=20, message="server back")
        assert res.get(timeout=30) == 5
        assert "recreating it" in w.output(), w.output()[-3000:]
        assert "unexpected error" not in w.output(), w.output()[-3000:]  # no process died
        assert w.stop() == 0
    finally:
        tasks.app.close()
        srv.stop()


def test_an_outage_during_a_long_task_is_logged_once_per_duty(tmp_path: Path, namespace: str,
                                                              start_worker: Any) -> None:
    """While a task runs, only the housekeeping thread talks to the server: it warned
    on every tick of an outage (several lines a second). Now once per duty, and once
    more when it works again."""
    srv = ServerProcess("valkey", tmp_path / "srv", appendonly=True).start()
    try:
        tasks.app.configure(url=srv.url, namespace=namespace)
        w = start_worker(srv.url, "-c", "1", *FAST)
        res = tasks.sleep_then_count.delay("outage", 9.0)
        wait_until(lambda: tasks.count_of("outage") == 1, message="task started")
        tasks.app.close()
        srv.stop()
        time.sleep(6)  # each failed attempt takes a second or two (redis-py's retries)
        srv.start()
        assert res.get(timeout=30) == 1
        out = w.output()
        failed = [line for line in out.splitlines() if "Housekeeping (" in line
                  and "failed, will retry" in line]
        assert failed, out[-3000:]
        assert len(failed) == len({line.split("Housekeeping (")[1].split(")")[0]
                                   for line in failed}), "\n".join(failed)
        assert "works again" in out, out[-3000:]
        assert w.stop() == 0
    finally:
        tasks.app.close()
        srv.stop()


def _try_enqueue() -> Any:
    try:
        return tasks.add.delay(2, 3)
    except ConnectionError:
        return None


def test_producer_gets_a_connection_error_not_a_hang(tmp_path: Path, namespace: str) -> None:
    srv = ServerProcess("valkey", tmp_path / "srv").start()
    app = StreamQ(srv.url, namespace=namespace)
    t = app.task(lambda: None, name="noop")
    t.delay()
    srv.stop()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        t.delay()
    assert time.monotonic() - t0 < 15
    app.close()


@pytest.mark.parametrize("server", ["valkey", "redis"], indirect=True)  # decoding, not slots
class TestBadMessagesGoToDeadLetters:
    def _start(self, app: StreamQ, start_worker: Any) -> Any:
        return start_worker(app.settings.url, "-c", "1", *FAST)

    def _wait_dead(self, app: StreamQ, n: int) -> list[Any]:
        return wait_until(lambda: (lambda d: d if len(d) >= n else None)(app.dead.list(
            "default")), timeout=20, message=f"{n} dead letters")

    def test_undecodable_envelope(self, app: StreamQ, start_worker: Any) -> None:
        app.server.connection.client.xadd(_stream(app), {"m": b"\xff\x00 not json"})
        w = self._start(app, start_worker)
        (d,) = self._wait_dead(app, 1)
        assert "undecodable message" in d.reason and d.raw == b"\xff\x00 not json"
        assert tasks.add.delay(1, 1).get(timeout=20) == 2
        assert w.stop() == 0

    def test_content_type_not_accepted(self, app: StreamQ, start_worker: Any) -> None:
        import pickle

        msg = Message(id="pickled-1", task="tests.tasks.echo", queue="default",
                      content_type="application/x-python-serialize",
                      content_encoding="binary", body=pickle.dumps([[1], {}]))
        app.enqueue([(msg, None)])
        w = self._start(app, start_worker)
        (d,) = self._wait_dead(app, 1)
        assert "not accepted" in d.reason
        res = app.AsyncResult("pickled-1")
        wait_until(lambda: res.status == "DEAD", message="record DEAD")
        assert "not accepted" in res.info["reason"]
        assert w.stop() == 0

    def test_undecodable_arguments_and_unknown_task(self, app: StreamQ,
                                                    start_worker: Any) -> None:
        broken = Message(id="broken-1", task="tests.tasks.echo", queue="default",
                         content_type="application/json", content_encoding="utf-8",
                         body="[[1], {")
        app.enqueue([(broken, None)])
        app.send_by_name("tests.tasks.nope", [1])
        w = self._start(app, start_worker)
        letters = self._wait_dead(app, 2)
        by_id = {d.task_id: d.reason for d in letters}
        assert "undecodable arguments" in by_id["broken-1"]
        assert any("not registered" in r for r in by_id.values())
        assert w.stop() == 0

    def test_reject_sends_to_dead_letters(self, app: StreamQ, start_worker: Any) -> None:
        res = tasks.reject.delay("bad order")
        w = self._start(app, start_worker)
        (d,) = self._wait_dead(app, 1)
        assert "rejected by the task: bad order" in d.reason
        assert res.status == "DEAD"
        assert w.stop() == 0


@on_shards_too
def test_dead_letters_requeue_and_purge(app: StreamQ, rclient: redis.Redis,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_api import drain

    # In-process, with nothing promoting the delayed set: unknown tasks die at once
    # instead of being handed back for a worker that knows them.
    monkeypatch.setattr("streamq.worker.executor.HANDBACKS", 0)

    ghost = app.send_by_name("tests.tasks.nope", [1])
    failed = tasks.fail.delay("boom")
    drain(app)
    assert failed.status == "FAILURE" and ghost.status == "DEAD"
    letters = {d.task_id: d for d in app.dead.list("default")}
    assert set(letters) == {ghost.id, failed.id}
    # One by id: back in the stream with retries reset, status PENDING.
    assert app.dead.requeue("default", [letters[failed.id].entry_id]) == 1
    assert failed.status == "PENDING" and failed.info["retries"] == 0
    assert "exc_type" not in failed.info
    assert rclient.xlen(_stream(app)) == 1
    assert [d.task_id for d in app.dead.list("default")] == [ghost.id]
    # All of them; they fail again and come back.
    assert app.dead.requeue("default") == 1
    assert app.dead.list("default") == []
    drain(app)
    assert {d.task_id for d in app.dead.list()} == {ghost.id, failed.id}
    assert app.dead.purge("default") == 2
    assert app.dead.list() == []
    assert rclient.xlen(_stream(app)) == 0


# The subject is the worker's batching, not the server: Valkey only.
@pytest.mark.parametrize("server", ["valkey"], indirect=True)
@pytest.mark.parametrize("threads", [1, 2])
def test_batching_never_strands_work_behind_a_long_task(app: StreamQ, start_worker: Any,
                                                        threads: int) -> None:
    """Celery #1933: messages prefetched by a process that then runs a long task are
    handed back, and an idle process starts them within 1 s; with threads too, once
    every thread runs a long task."""
    w1 = start_worker(app.settings.url, "-c", "1", "--threads", str(threads), *FAST)
    # Fast tasks first: the process now reads up to --prefetch at once.
    assert [r.get(timeout=10) for r in tasks.nap.map([(0.0, i) for i in range(30)])] \
        == list(range(30))
    # One script writes them all, so the blocked read takes them in one batch.
    handles = tasks.nap.map([(6.0, -1 - t) for t in range(threads)] +
                            [(0.0, i) for i in range(5)])
    longs, quick = handles[:threads], handles[threads:]
    wait_until(lambda: all(h.status == "STARTED" for h in longs),
               message="long tasks started")
    w2 = start_worker(app.settings.url, "-c", "1", *FAST)
    t_idle = time.monotonic()  # the second worker is up and idle from here
    assert [r.get(timeout=15) for r in quick] == list(range(5))
    waited = time.monotonic() - t_idle
    assert waited < 1.0, f"the quick tasks finished {waited:.2f} s after a process was free"
    assert "Handed back 5 prefetched message(s)" in w1.output()
    # Still running: nothing waited for them.
    assert all(h.status in ("STARTED", "PENDING") for h in longs)
    assert [h.get(timeout=15) for h in longs] == [-1 - t for t in range(threads)]
    assert w1.stop() == 0 and w2.stop() == 0


@pytest.mark.parametrize("durations", [(0.1, 0.2, 0.3, 0.4, 0.5), (0.3,)],
                         ids=["0.1-0.5s", "0.3s"])
def test_slow_tasks_spread_over_every_process_with_default_settings(
        vapp: StreamQ, start_worker: Any, durations: tuple[float, ...]) -> None:
    """Default --prefetch: one process used to read a whole batch of slow tasks and run
    it alone (100 tasks of 0.3 s on -c 8 ran in one process). Reads are sized by the
    tasks' run time now, so every process runs one at once."""
    w = start_worker(vapp.settings.url, "-c", "8", *FAST)
    wait_until(lambda: len(w.children()) == 8, message="8 processes")
    key = f"spread-{len(durations)}"
    handles = tasks.overlap.map([(key, durations[i % len(durations)]) for i in range(48)])
    pids = {h.get(timeout=60) for h in handles}
    client = vapp.server.connection.client
    tag = f"{vapp.settings.namespace}:overlap:{{{key}}}"
    assert int(client.get(f"{tag}:max") or 0) == 8
    assert len(pids) == 8 and pids == {int(p) for p in client.smembers(f"{tag}:pids")}
    assert w.stop() == 0


def test_foreign_stream_entry_goes_to_dead_letters_readable(app: StreamQ,
                                                            rclient: redis.Redis) -> None:
    ns = app.settings.namespace
    from streamq.worker.consumer import Consumer

    rclient.xadd(keys.stream(ns, "default"), {"hello": "world"})  # not written by streamq
    ok = tasks.add.delay(1, 2)
    c = Consumer(app, ["default"], "testhost:1:aaaa-0", block_ms=50)
    c.start(housekeeping=False)
    for _ in range(3):
        c.run_once()
    c.stop()
    assert ok.get(timeout=5) == 3  # the worker went on
    letters = app.dead.list("default")
    assert len(letters) == 1 and "undecodable" in letters[0].reason
    assert b"hello" in letters[0].raw and b"world" in letters[0].raw
    assert rclient.xlen(keys.stream(ns, "default")) == 0
