"""``streamq worker`` end to end: real subprocesses, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from streamq import StreamQ
from streamq.base import keys
from tests import tasks
from tests.conftest import ROOT, wait_until
from tests.servers import on_shards_too


@on_shards_too
def test_2000_tasks_through_two_processes(app: StreamQ, start_worker: Any) -> None:
    results = tasks.add.map([(i, 1000) for i in range(2000)])
    w = start_worker(app.settings.url, "-c", "2", "--log-level", "WARNING")
    # Ready means one process forked; the second follows at once.
    wait_until(lambda: len(w.children()) == 2, timeout=10, message="two processes")
    stream = keys.stream(app.settings.namespace, "default")
    client = app.server.connection.client
    try:
        values = [r.get(timeout=30) for r in results]
    except TimeoutError:
        pending = client.xpending_range(stream, keys.GROUP, "-", "+", 10)
        consumers = client.xinfo_consumers(stream, keys.GROUP)
        raise AssertionError(f"stuck: pending={pending} consumers={consumers}\n{w.output()}")
    assert values == [i + 1000 for i in range(2000)]
    assert all(r.status == "SUCCESS" for r in results[:50])
    # Acknowledged entries were deleted: nothing done stays in the stream.
    wait_until(lambda: client.xlen(keys.stream(app.settings.namespace, "default")) == 0,
               message="stream emptied")
    assert w.stop() == 0


def test_worker_on_a_module_written_by_the_test(valkey: Any, namespace: str,
                                                start_worker: Any, tmp_path: Path) -> None:
    mod = tmp_path / "usertasks_e2e.py"
    mod.write_text(textwrap.dedent("""
        from streamq import StreamQ
        app = StreamQ()

        @app.task(queue="mail")
        def shout(text):
            return text.upper()
    """))
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    w = start_worker(valkey.url, "-c", "1", module="usertasks_e2e", env=env)
    out = w.output()
    assert "queues=default,mail" in out and "usertasks_e2e.shout" in out
    producer = StreamQ(valkey.url, namespace=namespace)
    # Enqueue by name from another app: no import of the worker's module needed.
    res = producer.send_by_name("usertasks_e2e.shout", ["hello"], queue="mail")
    assert res.get(timeout=20) == "HELLO"
    producer.close()
    assert w.stop() == 0


def test_start_line_masks_the_password(valkey: Any, start_worker: Any) -> None:
    # The private server has no password; a URL with one still connects (default user
    # accepts any password only with requirepass unset... so use the ACL-free form).
    w = start_worker(valkey.url, "-c", "1", "--log-level", "INFO")
    line = next(ln for ln in w.output().splitlines() if "worker starting" in ln)
    assert valkey.url in line and "concurrency=1" in line and "tests.tasks.add" in line
    w.stop()
    # A password in the URL is never printed, even in the error for a refused URL.
    out = subprocess.run([sys.executable, "-m", "streamq", "worker", "tests.tasks", "--url",
                          "redis://:hunter2pw@127.0.0.1:1/0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert "hunter2pw" not in out.stderr + out.stdout and "***" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@on_shards_too
def test_sigterm_finishes_in_flight_tasks_and_exits_zero(app: StreamQ,
                                                         start_worker: Any) -> None:
    w = start_worker(app.settings.url, "-c", "1")
    res = tasks.sleep_then_count.delay("term", 1.5)
    wait_until(lambda: tasks.count_of("term") == 1, message="task started")
    w.signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0
    assert res.status == "SUCCESS" and res.get(timeout=1) == 1
    assert tasks.count_of("term") == 1
    ns = app.settings.namespace
    assert app.server.connection.client.xlen(keys.stream(ns, "default")) == 0


# The subject is the worker's policy, not the server: Valkey and Redis.
@pytest.mark.parametrize("server", ["valkey", "redis"], indirect=True)
def test_unknown_task_goes_to_dead_letters_and_worker_keeps_going(
        app: StreamQ, start_worker: Any) -> None:
    ghost = app.send_by_name("tests.tasks.does_not_exist", [1])
    ok = tasks.add.delay(1, 1)
    w = start_worker(app.settings.url, "-c", "1")
    assert ok.get(timeout=20) == 2
    wait_until(lambda: ghost.status == "DEAD", message="ghost dead")
    letters = app.dead.list("default")
    assert len(letters) == 1 and letters[0].task == "tests.tasks.does_not_exist"
    assert "not registered" in letters[0].reason
    assert w.proc.poll() is None  # still running
    assert tasks.add.delay(2, 2).get(timeout=20) == 4
    assert w.stop() == 0


def test_bad_worker_arguments_give_one_line_and_exit_2(valkey: Any) -> None:
    cases = [
        ["worker"],
        ["worker", "tests.tasks", "--bogus"],
        ["worker", "no_such_module_xyz"],
        ["worker", "tests.tasks", "--url", "http://nope"],
        ["worker", "tests.tasks", "-c", "0"],
    ]
    for args in cases:
        out = subprocess.run([sys.executable, "-m", "streamq", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamq: error:"), (args, out.stderr)
        assert "Traceback" not in out.stderr


@on_shards_too
def test_worker_survives_and_keeps_results_coming(app: StreamQ, start_worker: Any,
                                                  rclient: redis.Redis) -> None:
    """Results of a steady stream of tasks keep arriving while more are enqueued."""
    w = start_worker(app.settings.url, "-c", "2", "--log-level", "WARNING")
    got = []
    for i in range(20):
        got.append(tasks.add.delay(i, i).get(timeout=10))
        time.sleep(0.01)
    assert got == [2 * i for i in range(20)]
    assert w.stop() == 0


def test_get_waits_longer_than_the_socket_timeout(valkey: Any, namespace: str,
                                                  start_worker: Any) -> None:
    # get() blocks in slices shorter than the client's socket timeout, so a task
    # that takes longer than it is waited for, not cut off with a connection error.
    producer = StreamQ(valkey.url, namespace=namespace, socket_timeout_s=1.0)
    slow = producer.task(name=tasks.nap.name)(tasks.nap.fn)
    w = start_worker(valkey.url, "-c", "2")
    # Longer than redis-py's retries of a timed-out read (about 6 s with a 1 s timeout).
    fresh = slow.delay(7.0, 7)
    later = producer.AsyncResult(slow.delay(7.0, 8).id)  # not fresh: reads the record first
    assert fresh.get(timeout=30) == 7
    assert later.get(timeout=30) == 8
    producer.close()
    assert w.stop() == 0


def test_a_first_start_on_new_queues_warns_nothing(vapp: StreamQ, start_worker: Any) -> None:
    """The lease heartbeat ran before any process had created the queues' group, so
    every new user's first worker said "Consumer group missing (server restarted
    without its data?)"."""
    w = start_worker(vapp.settings.url, "-c", "2", "--log-level", "INFO")
    assert tasks.add.delay(2, 3).get(timeout=10) == 5
    before_stop = w.output()
    assert w.stop() == 0
    assert " WARNING " not in before_stop, before_stop


def test_a_clean_stop_leaves_no_consumers_behind(vapp: StreamQ, start_worker: Any) -> None:
    """Every restart used to leave its processes' consumers in the group, which status
    then listed as a dead worker's ("6 (4 dead)") until recovery removed them."""
    client = vapp.server.connection.client
    stream = keys.stream(vapp.settings.namespace, "default")
    w = start_worker(vapp.settings.url, "-c", "2", "--log-level", "WARNING")
    assert [r.get(timeout=10) for r in tasks.add.map([(i, i) for i in range(20)])] \
        == [2 * i for i in range(20)]
    assert len(client.xinfo_consumers(stream, keys.GROUP)) >= 1
    assert w.stop() == 0
    assert client.xinfo_consumers(stream, keys.GROUP) == []
