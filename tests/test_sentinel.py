"""Sentinel: producers and workers follow a primary failover by themselves.

A primary and its replica (AOF, ``appendfsync always`` on both) and one Sentinel,
all from the Valkey binary (``valkey-server --sentinel``); the app and the worker
know only the Sentinel's address. Each task run is logged to a file, so counting
does not depend on what the failover kept."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streamq import ConfigurationError, StreamQ
from tests import sentinel_tasks
from tests.conftest import ROOT, wait_until
from tests.servers import ServerProcess, _die_with_parent, _free_port, binary_path, require_kind

SERVICE = "mymaster"


class Sentinel:
    """One Sentinel process watching ``primary`` (quorum 1, down after 1 s)."""

    def __init__(self, workdir: Path, primary: ServerProcess, *, auth: str | None = None,
                 replicas: bool = True) -> None:
        require_kind("valkey")
        self.workdir, self.port = workdir, _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"logfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            + (f"sentinel auth-pass {SERVICE} {auth}\n" if auth else ""))
        self.replicas = replicas
        self.proc = subprocess.Popen(
            [str(binary_path("valkey")), str(conf), "--sentinel"], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                                  decode_responses=True)
        wait_until(self._ready, 20, message="the Sentinel to see the primary and its replica")

    def _ready(self) -> bool:
        try:
            if not self.replicas:
                return bool(self.client.sentinel_get_master_addr_by_name(SERVICE))
            return bool(self.client.sentinel_slaves(SERVICE))
        except redis.RedisError:
            return False

    def primary_port(self) -> int:
        return int(self.client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def stop(self) -> None:
        self.client.close()
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess, Sentinel]]:
    # A full sync waits the default 5 s for more replicas: with it at once, a demoted
    # primary's sync under load kept it busy past the Sentinel's 1 s down-after, and
    # a second failover followed (seen in CI: calls run up to 5 times).
    at_once: tuple[str, ...] = ()
    primary = ServerProcess("valkey", tmp_path / "primary", appendonly=True,
                            appendfsync="always", extra_args=at_once).start()
    replica = ServerProcess("valkey", tmp_path / "replica", appendonly=True,
                            appendfsync="always",
                            extra_args=(*at_once, "--replicaof", "127.0.0.1",
                                        str(primary.port))).start()
    link = replica._client(5)
    wait_until(lambda: link.info("replication").get("master_link_status") == "up", 20,
               message="the replica to sync")
    link.close()
    sentinel = Sentinel(tmp_path / "sentinel", primary)
    try:
        yield primary, replica, sentinel
    finally:
        sentinel.stop()
        for server in (primary, replica):
            server.kill()


def _app(sentinel: Sentinel, namespace: str) -> StreamQ:
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}"
    sentinel_tasks.app.configure(url=url, namespace=namespace, heartbeat_s=0.5)
    return sentinel_tasks.app


def _runs(path: Path) -> collections.Counter[str]:
    return collections.Counter(path.read_text().split()) if path.exists() else \
        collections.Counter()


def _drain_through(failover: Any, sentinel: Sentinel, primary: ServerProcess,
                   start_worker: Any, namespace: str, tmp_path: Path) -> None:
    """Enqueue 400 calls, let a worker drain them through ``failover()``, then check
    that every call ran, that the app enqueues on the new primary, and that its
    results are there."""
    app = _app(sentinel, namespace)
    runs = tmp_path / "runs.log"
    handles = sentinel_tasks.logged.map([(i,) for i in range(400)])
    # Replication is asynchronous: wait until the replica has the calls (what the
    # README's "durable_replicas" gives a producer that needs it).
    assert primary._client(10).execute_command("WAIT", 1, 5000) == 1
    worker = start_worker(app.settings.url, "-c", "2", module="tests.sentinel_tasks",
                          env={"SQ_RUNS_FILE": str(runs)})
    wait_until(lambda: sum(_runs(runs).values()) >= 100, 30, message="the first 100 runs")
    old = primary.port
    failover()
    wait_until(lambda: sentinel.primary_port() != old, 30, message="the failover")
    # The same app, without a restart or a reconnect of its own, writes to the new one.
    later = wait_until(lambda: _try_delay(), 30, message="an enqueue after the failover")
    every = {h.id for h in handles} | {later.id}
    wait_until(lambda: every <= set(_runs(runs)), 60,
               message=f"every call to run; log:\n{worker.output()[-3000:]}")
    counts = _runs(runs)
    assert set(counts) == every  # nothing ran that was not enqueued
    twice = [i for i, n in counts.items() if n > 1]
    # A run whose acknowledgement the failover lost runs again: only those in flight.
    # In flight: what the worker's 2 processes had read (up to --prefetch, 100, each)
    # or acknowledged on the old primary after its last write reached the replica.
    # Each failover (the Sentinel may add one under load) can run those again.
    switches = max(1, (sentinel.workdir / "sentinel.log").read_text().count("+switch-master"))
    assert all(counts[i] <= 1 + switches for i in twice) and len(twice) <= 200 * switches, \
        (len(twice), max((counts[i] for i in twice), default=0), switches)
    assert [h.get(timeout=30) for h in handles] == [2 * i for i in range(400)]
    assert later.get(timeout=30) == 14
    assert worker.proc.poll() is None, worker.output()[-3000:]


def _try_delay() -> Any:
    try:
        return sentinel_tasks.logged.delay(7)
    except Exception:
        return None


def test_a_worker_and_a_producer_follow_a_failover_to_a_demoted_primary(
        sentinel_setup: Any, start_worker: Any, namespace: str, tmp_path: Path) -> None:
    """SENTINEL FAILOVER: the old primary lives on as a replica, so writes to it are
    READONLY and a read blocked on it is UNBLOCKED; both mean reconnect."""
    primary, _replica, sentinel = sentinel_setup
    _drain_through(lambda: sentinel.client.sentinel_failover(SERVICE), sentinel, primary,
                   start_worker, namespace, tmp_path)


def test_a_worker_and_a_producer_follow_a_failover_after_the_primary_dies(
        sentinel_setup: Any, start_worker: Any, namespace: str, tmp_path: Path) -> None:
    primary, _replica, sentinel = sentinel_setup
    _drain_through(primary.kill, sentinel, primary, start_worker, namespace, tmp_path)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://127.0.0.1:26379", "names no primary"),
    ("redis+sentinel://127.0.0.1:x/mymaster", "invalid Sentinel address '127.0.0.1:x'"),
    ("redis+sentinel://127.0.0.1:26379/mymaster/zero", "db 'zero'"),
    ("redis+sentinel://u:s3cret@h:1/mymaster?ssl=true", "unknown parameter 'ssl'"),
])
def test_a_bad_sentinel_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        StreamQ(url)
    text = str(caught.value)
    assert message in text and "\n" not in text and "s3cret" not in text


def test_sentinels_that_know_no_such_primary_are_one_line(sentinel_setup: Any,
                                                           namespace: str) -> None:
    _primary, _replica, sentinel = sentinel_setup
    app = StreamQ(f"redis+sentinel://:pw@127.0.0.1:{sentinel.port}/nosuch",
                  namespace=namespace)
    result = subprocess.run(
        [os.environ.get("PYTHON", "python"), "-m", "streamq", "status", "--url",
         app.settings.url], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    assert "no Sentinel of redis+sentinel://:***@" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_url_reaches_the_primary_with_its_password_and_db(tmp_path: Path,
                                                              namespace: str) -> None:
    password = "pw/with?odd#chars"
    primary = ServerProcess("valkey", tmp_path / "p").start()
    primary._command("CONFIG", "SET", "requirepass", password)
    sentinel = None
    try:
        sentinel = Sentinel(tmp_path / "s", primary, auth=password, replicas=False)
        app = StreamQ(f"redis+sentinel://:pw%2Fwith%3Fodd%23chars@127.0.0.1:{sentinel.port}"
                      f"/{SERVICE}/3", namespace=namespace)
        handle = app.send_by_name("tests.nothing", (1,))
        raw = redis.Redis(host="127.0.0.1", port=primary.port, password=password, db=3)
        assert raw.exists(f"{namespace}:{{default}}:result:{handle.id}") == 1
        assert str(app.settings).count(password) == 0 and password not in repr(app)
        # The asyncio producer finds the primary the same way.
        sentinel_tasks.app.configure(url=app.settings.url, namespace=namespace)

        async def enqueue() -> str:
            try:
                return (await sentinel_tasks.logged.adelay(3)).id
            finally:
                await sentinel_tasks.app.aclose()
        task_id = asyncio.run(enqueue())
        assert raw.exists(f"{namespace}:{{default}}:result:{task_id}") == 1
        raw.close()
        app.close()
    finally:
        if sentinel is not None:
            sentinel.stop()
        primary.kill()
