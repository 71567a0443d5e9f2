"""Partitioned queues: one logical queue over N streams, spread over a cluster's slots,
and per-key order (calls with one ``partition_key`` run one at a time, in enqueue
order, across workers, processes, retries and crashes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from streamq import StreamQ
from streamq.base import keys
from streamq.base.errors import ConfigurationError
from streamq.base.ids import queue_of
from streamq.base.partitions import SLOTS, index_of_key, logical, names, tag_slot
from tests import tasks
from tests.conftest import ROOT, wait_until
from tests.servers import ShardedServer, on_shards_too, shards_only

KEYS = [f"customer-{j}" for j in range(20)]


def _send_keyed(per_key: int) -> list[Any]:
    """``per_key`` calls per key, interleaved; every tenth fails its first attempt."""
    return [tasks.ordered.apply_async((k, i, i % 10 == 3), partition_key=k)
            for i in range(per_key) for k in KEYS]


def _runs(app: StreamQ, key: str) -> list[int]:
    client = app.server.connection.client
    return [int(x) for x in client.lrange(f"{app.settings.namespace}:order:{key}", 0, -1)]


def test_partition_names_spread_evenly_over_the_slots() -> None:
    for count in (1, 3, 8, 16, 100):
        parts = names("orders", count)
        assert len(set(parts)) == count
        for k, name in enumerate(parts):
            assert k * SLOTS // count <= tag_slot(name) < (k + 1) * SLOTS // count
            assert logical(name) == "orders"
    assert logical("orders") == "orders" and logical("a#b") == "a#b"


@shards_only
def test_per_key_order_with_two_workers_of_two_processes(app: StreamQ, server: ShardedServer,
                                                         start_worker: Any) -> None:
    handles = _send_keyed(50)
    workers = [start_worker(app.settings.url, "-c", "2", "-Q", "orders",
                            "--log-level", "WARNING") for _ in range(2)]
    assert [h.get(timeout=90) for h in handles] == [i for i in range(50) for _ in KEYS]
    for key in KEYS:
        assert _runs(app, key) == list(range(50)), key  # in enqueue order, each once
    ns = app.settings.namespace
    client: Any = app.server.connection.client
    assert client.get(f"{ns}:overlaps") is None  # never two calls of one key at once
    retried = client.mget_nonatomic([f"{ns}:tries:{k}:{i}" for k in KEYS
                                     for i in range(3, 50, 10)])
    # Each of those failed once and ran once more: the retry kept its place, above.
    assert retried == [b"2"] * len(retried)
    # The keys' partitions sit on more than one node.
    nodes = {client.nodes_manager.get_node_from_slot(tag_slot(queue_of(h.id))).name
             for h in handles}
    assert len(nodes) >= 2, nodes
    for w in workers:
        assert w.stop() == 0


def test_per_key_order_survives_a_killed_process(vapp: StreamQ, start_worker: Any) -> None:
    handles = _send_keyed(30)
    w = start_worker(vapp.settings.url, "-c", "2", "-Q", "orders", "--log-level", "WARNING")
    wait_until(lambda: sum(len(_runs(vapp, k)) for k in KEYS) > 150, timeout=30,
               message="the drain under way")
    os.kill(w.children()[0], signal.SIGKILL)
    for h in handles:
        h.get(timeout=90)
    for key in KEYS:
        runs = _runs(vapp, key)
        # The killed call may have run twice (it was in flight); nothing else did,
        # and nothing ran out of order.
        collapsed = [x for n, x in enumerate(runs) if n == 0 or runs[n - 1] != x]
        assert collapsed == list(range(30)), (key, runs)
        assert len(runs) - len(collapsed) <= 1
    assert w.stop() == 0


@on_shards_too
def test_calls_without_a_key_spread_evenly(app: StreamQ) -> None:
    handles = tasks.ordered.map([("spread", i) for i in range(800)])
    counts = Counter(queue_of(h.id) for h in handles)
    assert sorted(counts) == sorted(tasks.ORDERS) and set(counts.values()) == {100}
    client = app.server.connection.client
    ns = app.settings.namespace
    assert sum(client.xlen(keys.stream(ns, q)) for q in tasks.ORDERS) == 800


def test_a_key_lands_on_the_same_partition_in_every_process(vapp: StreamQ) -> None:
    here = [queue_of(tasks.ordered.apply_async(("x", 0), partition_key=k).id) for k in KEYS]
    assert here == [tasks.ORDERS[index_of_key(k, 8)] for k in KEYS]
    code = ("from tests import tasks; from streamq.base.partitions import index_of_key; "
            f"print(','.join(tasks.ORDERS[index_of_key(k, 8)] for k in {KEYS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin"})
    assert out.stdout.strip().split(",") == here


def test_bad_partition_use_is_one_clear_error(vapp: StreamQ) -> None:
    with pytest.raises(ConfigurationError, match="not partitioned"):
        tasks.add.apply_async((1, 2), partition_key="k")
    with pytest.raises(ConfigurationError, match="countdown"):
        tasks.ordered.apply_async(("k", 1), partition_key="k", countdown=5)
    with pytest.raises(ValueError, match="non-empty string"):
        tasks.ordered.apply_async(("k", 1), partition_key="")
    app = StreamQ(vapp.settings.url, namespace=vapp.settings.namespace)
    for bad in (0, 257, 2.5, True):
        with pytest.raises(ConfigurationError, match="whole number from 1 to 256"):
            app.queue("q", partitions=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="may not hold '#'"):
        app.queue("a#b", partitions=4)
    app.queue("q", partitions=4)
    with pytest.raises(ConfigurationError, match="declared with 4 partitions already"):
        app.queue("q", partitions=5)


def test_the_number_of_partitions_is_fixed_while_the_queue_holds_work(vapp: StreamQ) -> None:
    tasks.ordered.apply_async(("k", 1), partition_key="k")  # records 8 partitions
    other = StreamQ(vapp.settings.url, namespace=vapp.settings.namespace)
    other.queue("orders", partitions=4)
    task = other.task(name="tests.tasks.ordered", queue="orders")(lambda key, i: i)
    with pytest.raises(ConfigurationError, match="has 8 partitions on the server, holding 1"):
        task.apply_async(("k", 2), partition_key="k")
    client = vapp.server.connection.client
    ns = vapp.settings.namespace
    for q in tasks.ORDERS:  # drained
        client.delete(keys.stream(ns, q))
    other.close()
    other = StreamQ(vapp.settings.url, namespace=vapp.settings.namespace)
    other.queue("orders", partitions=4)
    task = other.task(name="tests.tasks.ordered", queue="orders")(lambda key, i: i)
    assert queue_of(task.apply_async(("k", 2), partition_key="k").id) in names("orders", 4)
    assert client.hget(keys.partitions(ns), "orders") == b"4"
    other.close()
