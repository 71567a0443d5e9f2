"""Durable enqueue (issue 15): ``durable=True`` returns only once the server has the
write in its AOF on disk, by a WAITAOF that rides in the same write on the same
connection; WAIT on Redis 7.0 when replicas are asked, a clear refusal otherwise;
``NotDurableError`` (naming the handles; the task still runs) when it is not
confirmed. Every server here is real: the shared fixtures (Valkey 9, Redis 7.0, a
one-node cluster) and private ones for ``appendfsync always``, ``appendonly no``
and replicas."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streamq import ConfigurationError, NotDurableError, StreamQ
from streamq.base import keys
from tests import tasks
from tests.conftest import wait_until
from tests.servers import ServerProcess, require_kind

FAST = ("-c", "1", "--heartbeat", "0.2")


def _producer(url: str, namespace: str, **options: Any) -> StreamQ:
    """A durable producer app (a web process, say) beside the worker's tests.tasks."""
    app = StreamQ(url, namespace=namespace, durable=True, **options)
    app.task(name="tests.tasks.add")(tasks.add.fn)
    return app


def _calls(url: str, command: str) -> int:
    """How many times the server ran ``command`` (INFO commandstats)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    finally:
        client.close()
    return int(stats.get("calls", 0))


def _keys_of(url: str, namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{namespace}:*"))
    finally:
        client.close()


class Wire:
    """What the app's own connection writes and reads, recorded on the real
    connection (the bytes still go to the real server)."""

    def __init__(self, app: StreamQ, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, bytes]] = []
        with app.server.connection.own() as conn:
            self.conn = conn
        send, read = self.conn.send_packed_command, self.conn.read_response

        def send_packed(chunks: list[bytes], check_health: bool = True) -> None:
            self.events.append(("send", b"".join(chunks)))
            send(chunks, check_health=check_health)

        def read_response(*args: Any, **kwargs: Any) -> Any:
            self.events.append(("read", b""))
            return read(*args, **kwargs)

        monkeypatch.setattr(self.conn, "send_packed_command", send_packed)
        monkeypatch.setattr(self.conn, "read_response", read_response)

    @property
    def writes(self) -> list[bytes]:
        return [data for kind, data in self.events if kind == "send"]


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory of servers of this test's own, stopped at its end."""
    started: list[ServerProcess] = []

    def start(kind: str = "valkey", *, appendonly: bool = True, **config: str
              ) -> ServerProcess:
        require_kind(kind)
        srv = ServerProcess(kind, tmp_path / f"{kind}-{len(started)}",
                            appendonly=appendonly).start()
        started.append(srv)
        client = redis.Redis.from_url(srv.url)
        try:
            for name, value in config.items():
                client.config_set(name, value)
        finally:
            client.close()
        return srv

    yield start
    for srv in started:
        srv.stop()


# -- where and when the wait is sent ---------------------------------------------------------
def test_durable_delay_sends_waitaof_in_the_same_write(server: ServerProcess, namespace: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = _producer(server.url, namespace)
    try:
        if server.kind == "redis":  # 7.0: no WAITAOF, and only the disk was asked for
            xadds = _calls(server.url, "xadd")
            with pytest.raises(ConfigurationError) as refused:
                app.send_by_name("tests.tasks.add", [1, 2])
            text = str(refused.value)
            assert "\n" not in text and "WAITAOF" in text and "nothing was sent" in text
            assert "Redis >= 7.2 or Valkey" in text and "durable_replicas" in text
            assert _calls(server.url, "xadd") == xadds
            assert _keys_of(server.url, namespace) == []
            return
        app.send_by_name("tests.tasks.add", [1, 2])  # connects and asks the server once
        wire = Wire(app, monkeypatch)
        before, xadds = _calls(server.url, "waitaof"), _calls(server.url, "xadd")
        handle = app.send_by_name("tests.tasks.add", [2, 3])
        assert _calls(server.url, "waitaof") == before + 1
        assert _calls(server.url, "xadd") == xadds + 1
        # One write holds the record, the message and then the wait: one round trip.
        assert len(wire.writes) == 1
        write = wire.writes[0]
        assert write.index(b"HSET") < write.index(b"XADD") < write.index(b"WAITAOF")
        assert b"WAITAOF\r\n$1\r\n1\r\n$1\r\n0\r\n$4\r\n1000\r\n" in write
        # HSET, EXPIRE, XADD, WAITAOF: their replies are read after the one write.
        assert [kind for kind, _ in wire.events] == ["send", "read", "read", "read", "read"]
        # The server ran WAITAOF on the connection that wrote the message.
        client = redis.Redis.from_url(server.url)
        try:
            waited = [c for c in client.client_list() if c["cmd"] == "waitaof"]
        finally:
            client.close()
        wire.conn.send_command("CLIENT", "ID")
        assert [int(c["id"]) for c in waited] == [int(wire.conn.read_response())]
        assert handle.status == "PENDING"
    finally:
        app.close()


def test_durable_map_waits_once_behind_the_last_batch(server: ServerProcess, namespace: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if server.kind == "redis":
        pytest.skip("Redis 7.0 has no WAITAOF (its refusal is tested above)")
    app = _producer(server.url, namespace)
    try:
        app.send_by_name("tests.tasks.add", [0, 0])
        wire = Wire(app, monkeypatch)
        before = _calls(server.url, "waitaof")
        handles = app.registry["tests.tasks.add"].map([(i, i) for i in range(250)])
        assert len(handles) == 250 and len({h.id for h in handles}) == 250
        assert _calls(server.url, "waitaof") == before + 1
        writes = wire.writes
        assert len(writes) == 4  # three batches of at most 100 calls, then the wait
        assert [w.count(b"WAITAOF") for w in writes] == [0, 0, 0, 1]
        # The wait went out before the last batch's replies were read: no extra round
        # trip, and it covers every batch written before it on this connection.
        kinds = [kind for kind, _ in wire.events]
        last_send = len(kinds) - 1 - kinds[::-1].index("send")
        assert kinds[last_send + 1:].count("read") > 1
        client = redis.Redis.from_url(server.url)
        try:
            # 251: the call of the warm-up too.
            assert client.xlen(keys.stream(namespace, "default")) == 251
        finally:
            client.close()
    finally:
        app.close()


def test_apply_async_durable_overrides_the_app(valkey: ServerProcess, namespace: str) -> None:
    plain = StreamQ(valkey.url, namespace=namespace)
    durable = _producer(valkey.url, namespace)
    try:
        task = plain.task(name="tests.tasks.add")(tasks.add.fn)
        plain.server.transport.load_scripts()  # no NOSCRIPT (and second wait) below
        before = _calls(valkey.url, "waitaof")
        task.delay(1, 1)
        task.apply_async((1, 2))
        assert _calls(valkey.url, "waitaof") == before
        task.apply_async((1, 3), durable=True)
        task.apply_async((1, 4), countdown=30, durable=True)  # the schedule script
        assert _calls(valkey.url, "waitaof") == before + 2
        durable.registry["tests.tasks.add"].apply_async((1, 5), durable=False)
        assert _calls(valkey.url, "waitaof") == before + 2
        durable.registry["tests.tasks.add"].delay(1, 6)
        assert _calls(valkey.url, "waitaof") == before + 3
    finally:
        plain.close()
        durable.close()


def test_durable_from_the_environment(valkey: ServerProcess, namespace: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMQ_DURABLE", "yes")
    monkeypatch.setenv("STREAMQ_DURABLE_TIMEOUT_S", "0.5")
    app = StreamQ(valkey.url, namespace=namespace)
    try:
        assert app.settings.durable is True and app.settings.durable_timeout_s == 0.5
        before = _calls(valkey.url, "waitaof")
        app.send_by_name("tests.tasks.add", [1, 2])
        assert _calls(valkey.url, "waitaof") == before + 1
    finally:
        app.close()


def test_a_script_the_server_lost_is_covered_by_the_wait(server: ServerProcess,
                                                         namespace: str) -> None:
    if server.kind == "redis":
        pytest.skip("Redis 7.0 has no WAITAOF")
    app = _producer(server.url, namespace)
    try:
        app.send_by_name("tests.tasks.add", [0, 0])
        app.registry["tests.tasks.add"].map([(0, 0)])  # loads the scripts once
        client = redis.Redis.from_url(server.url)
        try:
            client.script_flush()
            before = _calls(server.url, "waitaof")
            handle = app.registry["tests.tasks.add"].apply_async((1, 2), countdown=60)
            # NOSCRIPT: the script is sent again, and a wait behind it.
            assert _calls(server.url, "waitaof") == before + 2
            assert client.zscore(keys.delayed(namespace, "default"), handle.id) is not None
            assert handle.status == "SCHEDULED"

            client.script_flush()  # and map()'s script, after its scripts were loaded once
            before = _calls(server.url, "waitaof")
            handles = app.registry["tests.tasks.add"].map([(i, 0) for i in range(250)])
            assert _calls(server.url, "waitaof") == before + 2
            assert client.xlen(keys.stream(namespace, "default")) == 2 + 250
            assert {h.status for h in handles} == {"PENDING"}
        finally:
            client.close()
    finally:
        app.close()


# -- what the disk says ------------------------------------------------------------------------
def test_everysec_durable_delay_runs_and_says_what_everysec_promises(
        valkey: ServerProcess, namespace: str, start_worker: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    app = _producer(valkey.url, namespace)
    try:
        with caplog.at_level(logging.WARNING, logger="streamq.server.durable"):
            handle = app.send_by_name("tests.tasks.add", [20, 22])
        warned = [r.getMessage() for r in caplog.records if r.name == "streamq.server.durable"]
        assert len(warned) == 1 and "appendfsync everysec" in warned[0]
        assert "appendfsync always" in warned[0]
        start_worker(valkey.url, *FAST)
        assert handle.get(timeout=15) == 42
    finally:
        app.close()


def test_always_durable_delay_survives_a_kill(private: Callable[..., ServerProcess],
                                              namespace: str, start_worker: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    srv = private(appendfsync="always")
    app = _producer(srv.url, namespace)
    try:
        with caplog.at_level(logging.WARNING, logger="streamq.server.durable"):
            handles = [app.send_by_name("tests.tasks.add", [i, 1]) for i in range(3)]
            handles += app.registry["tests.tasks.add"].map([(10, i) for i in range(150)])
        # always: nothing to warn of
        assert [r for r in caplog.records if r.name == "streamq.server.durable"] == []
        assert _calls(srv.url, "waitaof") == 4
    finally:
        app.close()
    srv.restart(kill=True)  # SIGKILL right after the calls returned
    client = redis.Redis.from_url(srv.url)
    try:
        assert client.xlen(keys.stream(namespace, "default")) == 153
    finally:
        client.close()
    start_worker(srv.url, *FAST)
    app = _producer(srv.url, namespace)
    try:
        got = [app.AsyncResult(h.id).get(timeout=20) for h in handles]
        assert got == [1, 2, 3] + [10 + i for i in range(150)]
    finally:
        app.close()


def test_appendonly_no_is_a_clear_error_and_the_task_still_runs(
        private: Callable[..., ServerProcess], namespace: str, start_worker: Any) -> None:
    srv = private(appendonly=False)
    app = _producer(srv.url, namespace)
    try:
        with pytest.raises(NotDurableError) as caught:
            app.send_by_name("tests.tasks.add", [4, 5])
        err = caught.value
        text = str(err)
        assert "\n" not in text and "appendonly off" in text
        assert "was enqueued" in text and "may still run" in text
        assert "appendonly yes" in text
        [handle] = err.handles
        assert handle.id in text
        start_worker(srv.url, *FAST)
        assert handle.get(timeout=15) == 9
    finally:
        app.close()


def test_appendfsync_no_never_confirms(private: Callable[..., ServerProcess],
                                       namespace: str) -> None:
    srv = private(appendfsync="no")
    app = _producer(srv.url, namespace, durable_timeout_s=0.2)
    try:
        with pytest.raises(NotDurableError) as caught:
            app.send_by_name("tests.tasks.add", [1, 1])
        text = str(caught.value)
        assert "on disk no" in text and "appendfsync always" in text
    finally:
        app.close()


# -- timeouts and replicas ---------------------------------------------------------------------
def test_a_replica_that_is_not_there_times_out(server: ServerProcess, namespace: str,
                                               start_worker: Any) -> None:
    app = _producer(server.url, namespace, durable_replicas=1, durable_timeout_s=0.2)
    try:
        command = "wait" if server.kind == "redis" else "waitaof"
        before = _calls(server.url, command)
        t0 = time.monotonic()
        with pytest.raises(NotDurableError) as caught:
            app.send_by_name("tests.tasks.add", [3, 4])
        assert time.monotonic() - t0 >= 0.2
        assert _calls(server.url, command) == before + 1
        err = caught.value
        [handle] = err.handles
        text = str(err)
        assert "\n" not in text and handle.id in text and "may still run" in text
        assert "0.2s" in text and "replica" in text
        assert ("WAIT" in text) if server.kind == "redis" else ("replicas 0" in text)

        with pytest.raises(NotDurableError) as many:
            app.registry["tests.tasks.add"].map([(i, 0) for i in range(120)])
        assert len(many.value.handles) == 120
        assert "each of 120 tasks" in str(many.value)

        start_worker(server.url, *FAST)
        assert handle.get(timeout=15) == 7
        assert [h.get(timeout=15) for h in many.value.handles] == list(range(120))
    finally:
        app.close()


@pytest.mark.parametrize("kind", ["valkey", "redis"])
def test_a_real_replica_confirms(kind: str, private: Callable[..., ServerProcess],
                                 namespace: str) -> None:
    primary, replica = private(kind), private(kind)
    with redis.Redis.from_url(primary.url) as admin:  # the full sync at once, not in 5 s
        admin.config_set("repl-diskless-sync-delay", 0)
    client = redis.Redis.from_url(replica.url)
    try:
        client.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: client.info("replication").get("master_link_status") == "up",
                   timeout=15, message="the replica's link")
    finally:
        client.close()
    app = _producer(primary.url, namespace, durable_replicas=1, durable_timeout_s=5)
    try:
        handle = app.send_by_name("tests.tasks.add", [1, 2])
        app.registry["tests.tasks.add"].map([(i, 0) for i in range(150)])
        assert _calls(primary.url, "wait" if kind == "redis" else "waitaof") == 2
    finally:
        app.close()
    client = redis.Redis.from_url(replica.url)
    try:
        assert client.xlen(keys.stream(namespace, "default")) == 151
        assert client.exists(keys.record(namespace, "default", handle.id)) == 1
    finally:
        client.close()


def test_a_timeout_longer_than_the_socket_is_refused(valkey: ServerProcess,
                                                     namespace: str) -> None:
    app = _producer(valkey.url, namespace, durable_timeout_s=10, socket_timeout_s=5)
    try:
        with pytest.raises(ConfigurationError, match=r"durable_timeout_s \(10\) must be "
                                                     r"shorter than socket_timeout_s \(5\)"):
            app.send_by_name("tests.tasks.add", [1, 2])
        assert _keys_of(valkey.url, namespace) == []
    finally:
        app.close()


# -- the bench's durable rows ------------------------------------------------------------------
def _bench_rows(url: str, namespace: str) -> tuple[dict[str, float | None], dict[str, Any]]:
    from streamq.cli import bench_durable
    from streamq.cli.bench_procs import Clock

    app = StreamQ(url, namespace=namespace)
    try:
        sink = app.task(name="tests.durable.sink", queue="bench-enqueue-only")(tasks.add.fn)
        return bench_durable.measure(app, sink, url, namespace, 50, (1, 2), Clock(60),
                                     lambda _msg: None)
    finally:
        app.close()


def test_bench_rows_measure_both_policies_and_put_the_server_back(
        private: Callable[..., ServerProcess], namespace: str) -> None:
    srv = private()
    rows, details = _bench_rows(srv.url, namespace)
    assert set(rows) == {"delay_beside_durable", "durable_everysec", "durable_always"}
    assert all(v is not None and v > 0 for v in rows.values()), rows
    assert details["durable_calls"]["delay_beside_durable"] == 50
    # The plain slices always finish; a durable slice may stop at its time budget.
    assert 1 <= details["durable_calls"]["durable_always"] <= 50
    assert details["durable_appendfsync_restored"] == "everysec"
    client = redis.Redis.from_url(srv.url)
    try:
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert _calls(srv.url, "waitaof") == 1 + sum(  # 1: the untimed first call
            details["durable_calls"][f"durable_{p}"] for p in ("everysec", "always"))
    finally:
        client.close()


@pytest.mark.parametrize("kind, appendonly, reason", [
    ("valkey", False, "appendonly off"), ("redis", True, "lacks; nothing was sent")])
def test_bench_rows_say_why_a_server_cannot_be_durable(
        kind: str, appendonly: bool, reason: str, private: Callable[..., ServerProcess],
        namespace: str) -> None:
    srv = private(kind, appendonly=appendonly)
    rows, details = _bench_rows(srv.url, namespace)
    assert rows == dict.fromkeys(("delay_beside_durable", "durable_everysec",
                                  "durable_always"))
    assert reason in details["durable_skipped"]
    client = redis.Redis.from_url(srv.url)
    try:
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    finally:
        client.close()


def test_durable_enqueue_works_under_the_documented_acl_rule(valkey: ServerProcess,
                                                             namespace: str) -> None:
    from tests.test_acl import RULE

    admin = redis.Redis.from_url(valkey.url, decode_responses=True)
    user, password = f"{namespace}-durable", "durable-acl-pw"
    admin.execute_command("ACL", "LOG", "RESET")
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}",
                          *RULE.format(ns=namespace).split())
    app = _producer(f"redis://{user}:{password}@127.0.0.1:{valkey.port}/0", namespace)
    try:
        before = _calls(valkey.url, "waitaof")
        handle = app.send_by_name("tests.tasks.add", [1, 2])
        app.registry["tests.tasks.add"].map([(i, 1) for i in range(120)])
        assert _calls(valkey.url, "waitaof") == before + 2
        assert handle.status == "PENDING"
        # Only the probe's CONFIG GET (appendfsync) is refused, and streamq goes on.
        refused = {e["object"] for e in admin.acl_log(128) if e["username"] == user}
        assert refused <= {"config|get"}, refused
    finally:
        app.close()
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
