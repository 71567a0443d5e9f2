"""Prometheus metrics: observer counters, the endpoint, multiprocess files, scrape errors."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from streamq import StreamQ, TaskEvent
from streamq.base import keys
from streamq.server.status import collect_status
from streamq.worker import metrics
from streamq.worker.consumer import Consumer
from tests import tasks
from tests.servers import on_shards_too


@pytest.fixture
def metrics_dir() -> Iterator[str]:
    """A fresh multiprocess directory; the environment is restored afterwards."""
    saved = os.environ.get(metrics.ENV)
    path = metrics.prepare_multiprocess_dir()
    try:
        yield path
    finally:
        metrics.cleanup_multiprocess_dir(path)
        if saved is not None:
            os.environ[metrics.ENV] = saved
        assert not os.path.exists(path)


@pytest.fixture
def endpoint(app: StreamQ, metrics_dir: str) -> Iterator[tuple[Any, int]]:
    """``serve`` on a free port; yields (a stand-in supervisor, port)."""
    sup = _Restarts()
    server, thread, port = metrics.serve(app, 0, lambda: sup.restarts)
    try:
        yield sup, port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Restarts:
    """The one attribute of Supervisor the endpoint reads."""

    restarts = 0


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def run_in_process(app: StreamQ, observer: Any, queues: tuple[str, ...] = ("default",)) -> None:
    """Run a consumer in this process, observed, until the queues are empty."""
    app.add_hook(observer)
    try:
        c = Consumer(app, list(queues), "testhost:1:aaaa-0", block_ms=50)
        c.start(housekeeping=False)
        idle = 0
        for _ in range(50):
            idle = idle + 1 if c.run_once() == 0 else 0
            if idle >= 2:
                break
        c.stop()
    finally:
        app.remove_hook(observer)


def _labels(task: str, queue: str = "default") -> tuple[tuple[str, str], ...]:
    return (("queue", queue), ("task", task))


def test_counters_and_queue_gauges(app: StreamQ, rclient: redis.Redis,
                                   endpoint: tuple[Any, int]) -> None:
    sup, port = endpoint
    observer = metrics.MetricsHook()
    ns = app.settings.namespace
    for i in range(5):
        tasks.add.delay(i, i)
    for _ in range(2):
        tasks.fail.delay("boom")
    tasks.reject.delay("no thanks")
    tasks.add.apply_async((1, 1), countdown=60)
    for i in range(3):
        tasks.on_other_queue.delay(i)
    run_in_process(app, observer)
    sup.restarts = 4

    got = scrape(port)
    add, fail, rej = (_labels(f"tests.tasks.{n}") for n in ("add", "fail", "reject"))
    assert got[("streamq_tasks_started_total", add)] == 5
    assert got[("streamq_tasks_succeeded_total", add)] == 5
    assert got[("streamq_task_duration_seconds_count", add)] == 5
    assert got[("streamq_task_duration_seconds_sum", add)] > 0
    assert got[("streamq_task_duration_seconds_bucket", (("le", "+Inf"), *add))] == 5
    assert got[("streamq_tasks_started_total", fail)] == 2
    assert got[("streamq_tasks_failed_total", fail)] == 2
    assert ("streamq_tasks_succeeded_total", fail) not in got
    assert got[("streamq_tasks_dead_total", rej)] == 1
    assert ("streamq_tasks_retried_total", add) not in got
    assert got[("streamq_worker_process_restarts_total", ())] == 4

    for queue in ("default", "other"):
        stream = keys.stream(ns, queue)
        try:
            pending = int(rclient.xpending(stream, keys.GROUP)["pending"])
        except redis.ResponseError:  # no group on "other": nobody consumed it
            pending = 0
        q = (("partition", ""), ("queue", queue))
        assert got[("streamq_queue_backlog", q)] == rclient.xlen(stream) - pending
        assert got[("streamq_queue_pending", q)] == pending
        assert got[("streamq_queue_scheduled", q)] == rclient.zcard(keys.delayed(ns, queue))
        assert got[("streamq_queue_dead", q)] == rclient.xlen(keys.dead(ns, queue))
    assert got[("streamq_queue_dead", (("partition", ""), ("queue", "default")))] == 3
    assert got[("streamq_queue_scheduled", (("partition", ""), ("queue", "default")))] == 1
    assert got[("streamq_queue_backlog", (("partition", ""), ("queue", "other")))] == 3

    for i in range(2):  # counters keep counting across scrapes
        tasks.add.delay(i, i)
    run_in_process(app, observer)
    assert scrape(port)[("streamq_tasks_succeeded_total", add)] == 7


def _child(observer: Any, n: int) -> None:
    for _ in range(n):
        observer.succeeded(TaskEvent("i", "tests.tasks.add", "default", runtime_s=0.01))
    os._exit(0)


@on_shards_too
def test_a_partitioned_queue_has_a_row_per_partition_and_a_total(
        app: StreamQ, endpoint: tuple[Any, int]) -> None:
    _, port = endpoint
    tasks.ordered.map([("m", i) for i in range(40)])  # 5 on each of the 8 partitions
    for i in range(6):
        tasks.ordered.apply_async(("k", i), partition_key="one-key")  # 6 more on one
    got = scrape(port)
    rows = {dict(labels)["partition"]: value for (name, labels), value in got.items()
            if name == "streamq_queue_backlog" and dict(labels)["queue"] == "orders"}
    assert rows.pop("") == 46  # the total: {partition=""} is one figure per queue
    assert sorted(rows) == sorted(tasks.ORDERS) and sorted(rows.values()) == [5.0] * 7 + [11.0]
    # The status behind it: the total row first, its partitions after it.
    doc = collect_status(app.server.connection, app.settings)["queues"]
    mine = [q for q in doc if q["queue"] == "orders" or q.get("partition_of") == "orders"]
    assert mine[0]["queue"] == "orders" and mine[0]["partitions"] == 8
    assert mine[0]["backlog"] == 46 and len(mine) == 9


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_processes_are_summed(app: StreamQ, endpoint: tuple[Any, int]) -> None:
    _, port = endpoint
    observer = metrics.MetricsHook()  # created before the fork, as in the supervisor
    observer.succeeded(TaskEvent("i", "tests.tasks.add", "default", runtime_s=0.02))
    children = [mp.get_context("fork").Process(target=_child, args=(observer, 3))
                for _ in range(2)]
    for p in children:
        p.start()
    for p in children:
        p.join(10)
        assert p.exitcode == 0
        metrics.mark_process_dead(p.pid)  # type: ignore[arg-type]
    got = scrape(port)
    assert got[("streamq_tasks_succeeded_total", _labels("tests.tasks.add"))] == 7
    assert got[("streamq_task_duration_seconds_count", _labels("tests.tasks.add"))] == 7


def test_a_server_error_does_not_break_the_endpoint(metrics_dir: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    down = StreamQ("redis://127.0.0.1:1/0", namespace="nowhere", connect_timeout_s=1.0)
    metrics.MetricsHook().succeeded(TaskEvent("i", "t", "default", runtime_s=0.5))
    server, thread, port = metrics.serve(down, 0)
    try:
        with caplog.at_level(logging.WARNING, logger="streamq.metrics"):
            got = scrape(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        down.close()
    assert got[("streamq_tasks_succeeded_total", _labels("t"))] == 1
    assert not any(name.startswith("streamq_queue_") for name, _ in got)
    assert "could not read queue figures" in caplog.text


def test_observer_and_serve_need_the_directory() -> None:
    saved = os.environ.pop(metrics.ENV, None)
    try:
        with pytest.raises(RuntimeError, match="prepare_multiprocess_dir"):
            metrics.MetricsHook()
    finally:
        if saved is not None:
            os.environ[metrics.ENV] = saved


def test_unknown_task_names_share_one_label(app: StreamQ, rclient: redis.Redis,
                                            endpoint: tuple[Any, int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Label values come from message contents: 30 made-up task names used to make 30
    series. Tasks this worker does not know share one label value."""
    monkeypatch.setattr("streamq.worker.executor.HANDBACKS", 0)  # dead at once
    _, port = endpoint
    observer = metrics.MetricsHook(app.registry)
    for i in range(30):
        app.send_by_name(f"made.up.name{i}", [1])
    tasks.add.delay(1, 1)
    run_in_process(app, observer)
    got = scrape(port)
    dead = {labels for (name, labels) in got if name == "streamq_tasks_dead_total"}
    assert dead == {_labels(metrics.UNKNOWN_TASK)}
    assert got[("streamq_tasks_dead_total", _labels(metrics.UNKNOWN_TASK))] == 30
    assert got[("streamq_tasks_succeeded_total", _labels("tests.tasks.add"))] == 1
