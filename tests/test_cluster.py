"""Redis Cluster: queues spread over a real 3-primary cluster, the router's one write
per node, a slot migrated under a draining worker, and cluster URLs.

The core and reliability tests run on the same cluster too (``on_shards_too`` in
their modules); these are the cases only a multi-node cluster has.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from streamq import StreamQ
from streamq.base import keys
from streamq.base.errors import BrokerConnectionError, ConfigurationError
from streamq.base.partitions import SLOTS
from streamq.server.transport import Packed
from tests import tasks
from tests.conftest import ROOT, wait_until
from tests.servers import ShardedServer, shards_only


def _node_port(app: StreamQ, queue: str) -> int:
    slot = key_slot(keys.stream(app.settings.namespace, queue).encode())
    client: Any = app.server.connection.client
    return int(client.nodes_manager.get_node_from_slot(slot).port)


def _queues_per_node(app: StreamQ, server: ShardedServer, per_node: int) -> dict[int, list[str]]:
    """Queue names whose slots sit on each node, ``per_node`` for every node."""
    found: dict[int, list[str]] = {int(n.connection_pool.connection_kwargs["port"]): []
                                   for n in server.nodes()}
    i = 0
    while any(len(q) < per_node for q in found.values()):
        name = f"q{i}"
        port = _node_port(app, name)
        if len(found[port]) < per_node:
            found[port].append(name)
        i += 1
    return found


def _send(task: Any, calls: list[tuple[Any, ...]], queue: str) -> list[Any]:
    return [task.apply_async(args, queue=queue) for args in calls]


def _stats(node: redis.Redis) -> dict[str, Any]:
    return node.info("commandstats")  # type: ignore[return-value]


@shards_only
def test_queues_on_every_node_drain_through_one_worker(app: StreamQ, server: ShardedServer,
                                                       start_worker: Any) -> None:
    per_node = _queues_per_node(app, server, 2)
    queues = [q for qs in per_node.values() for q in qs]
    nodes = server.nodes()
    for n in nodes:
        n.config_resetstat()
    nodes[1].script_flush()  # one node lost its scripts: only its calls are sent again
    handles = []
    for q in queues:
        handles += _send(tasks.count, [(f"{q}-{i}",) for i in range(150)], q)
        handles += [tasks.count.apply_async((f"{q}-late-{i}",), queue=q, countdown=0.3)
                    for i in range(10)]
    w = start_worker(app.settings.url, "-c", "2", "-Q", ",".join(queues),
                     "--log-level", "WARNING")
    assert [h.get(timeout=60) for h in handles] == [1] * len(handles)
    client: Any = app.server.connection.client
    counted = client.mget_nonatomic([f"{app.settings.namespace}:count:{q}-{i}"
                                     for q in queues for i in range(150)])
    assert counted == [b"1"] * len(counted)  # each ran exactly once
    for n in nodes:
        stats = _stats(n)
        # The hot path computes slots itself: no COMMAND GETKEYS round trips.
        assert not any("getkeys" in name for name in stats), stats.keys()
        # Every node was read from and written to by the worker.
        assert stats["cmdstat_xreadgroup"]["calls"] > 0
        assert stats["cmdstat_evalsha"]["calls"] > 0
    assert w.stop() == 0
    for n in nodes:
        n.close()


@shards_only
def test_one_packed_exchange_is_one_write_per_node(app: StreamQ, server: ShardedServer) -> None:
    per_node = _queues_per_node(app, server, 1)
    ns = app.settings.namespace
    packed = Packed()
    for _ in range(10):
        for (q,) in per_node.values():
            packed.command("INCR", f"{ns}:{{{q}}}:n")
    transport = app.server.broker.transport
    transport.run(Packed(list(packed.commands)))  # connects; the next run is measured
    nodes = {int(n.connection_pool.connection_kwargs["port"]): n for n in server.nodes()}
    before = {p: int(n.info("stats")["total_reads_processed"]) for p, n in nodes.items()}
    replies = transport.run(packed)
    after = {p: int(n.info("stats")["total_reads_processed"]) for p, n in nodes.items()}
    assert replies == [n for n in range(11, 21) for _ in range(3)]  # in the caller's order
    for port in nodes:
        # One read for the ten commands on that node, one for the INFO after them
        # (one command at a time would be ten).
        assert after[port] - before[port] <= 3, (port, before, after)
        nodes[port].close()


def _migrate(server: ShardedServer, slot: int, source_port: int, target_port: int) -> None:
    """Move ``slot`` key by key, as ``redis-cli --cluster reshard`` does."""
    nodes = {int(n.connection_pool.connection_kwargs["port"]): n for n in server.nodes()}
    source, target = nodes[source_port], nodes[target_port]
    source_id = source.execute_command("CLUSTER", "MYID")
    target_id = target.execute_command("CLUSTER", "MYID")
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while True:
        found = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 50)
        if not found:
            break
        source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000,
                               "KEYS", *found)
        time.sleep(0.02)  # the worker and the producer keep going in between
    for n in (target, source, *nodes.values()):
        n.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    for n in nodes.values():
        n.close()


@shards_only
def test_a_slot_migrated_under_a_draining_worker_loses_nothing_and_runs_nothing_twice(
        app: StreamQ, server: ShardedServer, start_worker: Any) -> None:
    queue = "moving"
    ns = app.settings.namespace
    slot = key_slot(keys.stream(ns, queue).encode())
    source = _node_port(app, queue)
    ports = [int(n.connection_pool.connection_kwargs["port"]) for n in server.nodes()]
    target = next(p for p in ports if p != source)
    first = _send(tasks.sleep_then_count, [(f"mv-{i}", 0.004) for i in range(1200)], queue)
    w = start_worker(app.settings.url, "-c", "2", "-Q", queue, "--log-level", "WARNING")
    wait_until(lambda: tasks.count_of("mv-100"), timeout=20, message="the drain under way")
    late: list[Any] = []
    errors: list[BaseException] = []

    def produce() -> None:  # enqueues go on while the slot moves
        try:
            for i in range(150):
                late.append(tasks.sleep_then_count.apply_async((f"mv-late-{i}", 0.0),
                                                               queue=queue))
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    _migrate(server, slot, source, target)
    producer.join(60)
    assert not errors, errors
    handles = first + late
    assert len(handles) == 1350
    for h in handles:
        h.get(timeout=60)
    client: Any = app.server.connection.client
    counted = client.mget_nonatomic([f"{ns}:count:mv-{i}" for i in range(1200)]
                                    + [f"{ns}:count:mv-late-{i}" for i in range(150)])
    assert counted == [b"1"] * 1350  # every task ran, and exactly once
    owner = redis.Redis(port=target)
    try:
        assert owner.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
        assert owner.xlen(keys.stream(ns, queue)) == 0
        assert owner.xlen(keys.dead(ns, queue)) == 0
    finally:
        owner.close()
    assert w.stop() == 0


@pytest.mark.parametrize(("url", "says"), [
    ("redis+cluster://127.0.0.1:7000/1", "only db 0"),
    ("redis+cluster://127.0.0.1:notaport", "invalid node address"),
    ("redis+cluster://127.0.0.1:7000?colour=red", "unknown parameter 'colour'"),
    ("redis+cluster://127.0.0.1:7000?ssl_ca_certs=x", "use a rediss:// URL"),
])
def test_bad_cluster_urls_are_one_line(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        StreamQ(url)
    out = subprocess.run([sys.executable, "-m", "streamq", "status", "--url", url],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and says in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_an_unreachable_cluster_is_a_connection_error() -> None:
    app = StreamQ("redis+cluster://:s3cret-pw@127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(BrokerConnectionError) as caught:
        app.server.info("server")
    assert "cannot reach" in str(caught.value) and "s3cret" not in str(caught.value)
    app.close()
    out = subprocess.run([sys.executable, "-m", "streamq", "status", "--url",
                          "redis+cluster://127.0.0.1:1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode != 0 and "cannot reach" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@shards_only
def test_durable_writes_wait_on_each_node_they_wrote_to(app: StreamQ,
                                                        server: ShardedServer) -> None:
    per_node = _queues_per_node(app, server, 1)
    nodes = {int(n.connection_pool.connection_kwargs["port"]): n for n in server.nodes()}
    for (q,) in per_node.values():  # not durable: the queue's first call notes it elsewhere
        tasks.add.apply_async((1, 2), queue=q)
    before = {p: _stats(n).get("cmdstat_waitaof", {}).get("calls", 0) for p, n in nodes.items()}
    for (q,) in per_node.values():
        tasks.add.apply_async((1, 2), queue=q, durable=True)
    tasks.add.apply_async((3, 4), queue=per_node[min(per_node)][0], durable=True)
    after = {p: _stats(n).get("cmdstat_waitaof", {}).get("calls", 0) for p, n in nodes.items()}
    for port, n in nodes.items():
        expected = 2 if port == min(per_node) else 1
        assert after[port] - before[port] == expected, (port, before, after)
        n.close()


@shards_only
def test_killed_connections_on_every_node_lose_and_double_nothing(app: StreamQ,
                                                                 server: ShardedServer) -> None:
    per_node = _queues_per_node(app, server, 1)
    queues = [q for (q,) in per_node.values()]
    nodes = server.nodes()
    ns = app.settings.namespace

    def kill_all() -> None:  # every client of every node but these
        for n in nodes:
            n.client_kill_filter(_type="normal", skipme=True)

    for q in queues:
        tasks.echo.apply_async(("warm",), queue=q)  # opens the router's connections
    kill_all()
    for q in queues:
        tasks.echo.apply_async(("after-kill",), queue=q)
    kill_all()
    handles = [h for q in queues
               for h in _send(tasks.echo, [(str(i),) for i in range(100)], q)]
    by_port = {int(n.connection_pool.connection_kwargs["port"]): n for n in nodes}
    # The pool finds a killed connection before the next send and connects again, so
    # each call is written once. (A connection cut mid-exchange, which the router
    # sends again, is not reproduced here.)
    for q in queues:
        assert by_port[_node_port(app, q)].xlen(keys.stream(ns, q)) == 102
    assert len(handles) == 300
    for n in nodes:
        n.close()


@shards_only
def test_an_idle_worker_blocks_once_on_each_node(app: StreamQ, server: ShardedServer,
                                                 start_worker: Any) -> None:
    per_node = _queues_per_node(app, server, 2)  # 2 queues (slots) on every node
    queues = [q for qs in per_node.values() for q in qs]
    w = start_worker(app.settings.url, "-c", "1", "-Q", ",".join(queues),
                     "--log-level", "WARNING")
    nodes = {int(n.connection_pool.connection_kwargs["port"]): n for n in server.nodes()}
    most, all_three = 0, 0
    for _ in range(40):  # the worker's process: never more than one blocked read a node
        round_ = 0
        for n in nodes.values():
            blocked = [c for c in n.client_list()
                       if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")]
            round_ += bool(blocked)
            most = max(most, len(blocked))
        all_three += round_ == len(nodes)
        time.sleep(0.025)
    assert most == 1, most
    # The nodes' blocked reads overlap: they are sent together, one to each node
    # (blocking on one node at a time, a round of samples would rarely see all three).
    assert all_three >= 5, all_three
    # A call to any of them is taken while it blocks elsewhere.
    assert [tasks.add.apply_async((i, 1), queue=q).get(timeout=10)
            for i, q in enumerate(queues)] == [i + 1 for i in range(len(queues))]
    assert w.stop() == 0
    for n in nodes.values():
        n.close()


def _cluster_of(tmp_path: Any, primaries: int, replica_of: int) -> list[Any]:
    """``primaries`` Valkey nodes sharing the slots, and one replica of the
    ``replica_of``-th: a cluster whose nodes fail over by themselves (1 s timeout)."""
    from tests.servers import ServerProcess, _free_port

    buses = [_free_port() for _ in range(primaries + 1)]
    nodes = [ServerProcess("valkey", tmp_path / f"n{i}", appendonly=True, extra_args=(
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", "1000", "--cluster-port", str(bus),
        "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0",
    )).start() for i, bus in enumerate(buses)]
    clients = [redis.Redis(port=n.port) for n in nodes]
    for i, c in enumerate(clients[:primaries]):
        c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * SLOTS // primaries,
                          (i + 1) * SLOTS // primaries - 1)
    for c in clients[1:]:
        c.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port, buses[0])
    wait_until(lambda: all(len(c.execute_command("CLUSTER", "NODES").splitlines())
                           == len(nodes) for c in clients), 20,
               message="the nodes to meet")
    target = clients[replica_of].execute_command("CLUSTER", "MYID")
    wait_until(lambda: _try(lambda: clients[-1].execute_command("CLUSTER", "REPLICATE",
                                                                target)), 20,
               message="the replica to attach")
    wait_until(lambda: all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                           for c in clients)
               and clients[-1].info("replication").get("master_link_status") == "up", 30,
               message="the cluster and its replica")
    for c in clients:
        c.close()
    return nodes


def _try(call: Any) -> bool:
    try:
        call()
        return True
    except redis.RedisError:
        return False


def test_a_primary_killed_under_a_draining_worker_fails_over_and_loses_nothing(
        tmp_path: Any, namespace: str, start_worker: Any) -> None:
    nodes = _cluster_of(tmp_path, 3, 0)
    try:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes[:3])
        tasks.app.configure(url=url, namespace=namespace, heartbeat_s=0.5, block_ms=200)
        queue = next(q for q in (f"fo{i}" for i in range(1000))
                     if key_slot(keys.stream(namespace, q).encode()) < SLOTS // 3)
        first = _send(tasks.count_through_failover, [(f"fo-{i}",) for i in range(600)], queue)
        # Replication is asynchronous: wait until the replica has the calls.
        with redis.Redis(port=nodes[0].port) as primary:
            assert primary.execute_command("WAIT", 1, 5000) == 1
        w = start_worker(url, "-c", "2", "-Q", queue, "--log-level", "WARNING")
        wait_until(lambda: tasks.count_of("fo-100"), timeout=30, message="the drain under way")
        nodes[0].kill()  # the primary of the queue's slot: its replica takes over
        with redis.Redis(port=nodes[3].port) as replica:
            wait_until(lambda: replica.info("replication")["role"] == "master", 30,
                       message="the replica to be promoted")
        later = wait_until(lambda: _try_send(queue), 30, message="an enqueue after it")
        for h in [*first, later]:
            h.get(timeout=60)
        client: Any = tasks.app.server.connection.client
        counted = client.mget_nonatomic([f"{namespace}:count:fo-{i}" for i in range(600)])
        assert all(c in (b"1", b"2") for c in counted), counted  # every call ran
        # Twice only what was in flight: read (up to --prefetch each) or acknowledged
        # on the old primary after its last write reached the replica.
        assert counted.count(b"2") <= 200, counted.count(b"2")
        assert w.stop() == 0
    finally:
        tasks.app.close()
        for n in nodes:
            n.kill()


def _try_send(queue: str) -> Any:
    try:
        return tasks.count_through_failover.apply_async(("fo-late",), queue=queue)
    except Exception:
        return None
