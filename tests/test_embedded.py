"""The embedded Valkey server: real processes, no mocks.

Every test runs in a project directory of its own; the ``project`` fixture stops
whatever server the test left behind (``stop_embedded``, then SIGKILL by pid).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamq.base.errors import ConfigurationError, EmbeddedServerError
from streamq.server.embedded import (
    _default_socket,
    embedded_url,
    run_server_foreground,
    server_version,
    stop_embedded,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ON_PROC = Path("/proc/self/cwd").exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _server_pids(project: Path) -> set[int]:
    """Live valkey-server processes whose working directory is this project's state dir."""
    state = str(project.resolve() / ".streamq")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                os.readlink(entry / "exe").endswith("valkey-server")
                and os.readlink(entry / "cwd") == state
                and (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
            ):
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def _wait_refused(sock: Path, timeout: float = 10.0) -> None:
    """Wait until nothing accepts connections on ``sock`` (a killed server's threads may linger)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
            except ConnectionRefusedError:
                return
        time.sleep(0.02)
    raise AssertionError(f"{sock} still accepts connections")


def _kill_leftovers(project: Path) -> None:
    with_pidfile = set()
    try:
        with_pidfile.add(int((project / ".streamq" / "valkey.pid").read_text()))
    except (OSError, ValueError):
        pass
    for pid in with_pidfile | (_server_pids(project) if ON_PROC else set()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list of running servers in a cache dir of the test's own (subprocesses too)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(params=["long", "short"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A project dir: "long" forces the temp-dir socket fallback, "short" the in-dir socket."""
    if request.param == "long":
        path = tmp_path / ("a-rather-long-project-directory-name-" * 3)
        path.mkdir()
    else:
        path = Path(tempfile.mkdtemp(prefix="sq-", dir="/tmp"))
    try:
        yield path
    finally:
        try:
            stop_embedded(path, timeout=10)
        finally:
            _kill_leftovers(path)
            # A server that died uncleanly leaves its socket file, maybe in the temp dir.
            with contextlib.suppress(OSError):
                Path((path / ".streamq" / "socket").read_text().strip()).unlink()
            if request.param == "short":
                shutil.rmtree(path, ignore_errors=True)


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _info(url: str) -> dict:
    client = _client(url)
    try:
        return client.info("server")
    finally:
        client.close()


def _socket_file(url: str) -> Path:
    assert url.startswith("unix:///")
    return Path(url[len("unix://") :])


def test_first_call_starts_and_announces_once(project: Path) -> None:
    announced: list[str] = []
    url = embedded_url(project, announce=announced.append)
    assert len(announced) == 1
    line = announced[0]
    assert line.startswith("streamq: started the embedded Valkey ")
    assert url in line and "AOF on" in line and "streamq server --stop" in line
    assert "\n" not in line

    info = _info(url)
    assert info["valkey_version"] == server_version()
    pid = int((project / ".streamq" / "valkey.pid").read_text())
    assert info["process_id"] == pid

    assert embedded_url(project, announce=announced.append) == url
    assert len(announced) == 1
    assert _info(url)["run_id"] == info["run_id"]
    if ON_PROC:
        assert _server_pids(project) == {pid}


def test_socket_location(project: Path) -> None:
    url = embedded_url(project, announce=lambda line: None)
    sock = _socket_file(url)
    assert sock.is_socket()
    assert len(os.fsencode(sock)) <= 107
    record = project / ".streamq" / "socket"
    if sock.parent == project.resolve() / ".streamq":
        assert not record.exists()
    else:
        assert len(os.fsencode(project.resolve() / ".streamq" / "valkey.sock")) > 100
        assert sock.parent == Path(tempfile.gettempdir()) / f"streamq-{os.getuid()}"
        assert (sock.parent.stat().st_mode & 0o777) == 0o700
        assert sock.name.startswith("streamq-")
        assert Path(record.read_text().strip()) == sock
    assert (sock.stat().st_mode & 0o777) == 0o600
    conf = (project / ".streamq" / "valkey.conf").read_text()
    settings = ("port 0", "appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction")
    for setting in settings:
        assert setting in conf
    client = _client(url)
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("port") == {"port": "0"}
    finally:
        client.close()


def test_separate_processes_reuse_the_server(project: Path) -> None:
    code = (
        "import sys; from streamq.server.embedded import embedded_url; "
        "print(embedded_url())"  # the default project dir is the working directory
    )
    first = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    # The starter has exited: the server must have outlived it.
    assert "streamq: started the embedded Valkey" in first.stderr
    assert "state in ./.streamq/" in first.stderr
    run_id = _info(url)["run_id"]

    # A process that finds it running says once which one it uses.
    announced: list[str] = []
    assert embedded_url(project, announce=announced.append) == url
    assert announced == [f"streamq: using the embedded server of {project.resolve()} ({url})"]
    assert embedded_url(project, announce=announced.append) == url
    assert len(announced) == 1

    second = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == url
    assert second.stderr == f"streamq: using the embedded server of {project.resolve()} ({url})\n"
    assert _info(url)["run_id"] == run_id


def test_concurrent_starts_launch_one_server(project: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    code = (
        "import os, sys, time, redis\n"
        "from streamq.server.embedded import embedded_url\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
        "lines = []\n"
        "url = embedded_url(sys.argv[2], announce=lines.append)\n"
        "lines = [ln for ln in lines if ln.startswith('streamq: started')]\n"
        "client = redis.Redis.from_url(url)\n"
        "print(url, client.info('server')['run_id'], len(lines))\n"
        "client.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go), str(project)],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(6)
    ]
    time.sleep(0.5)  # let every interpreter start and reach the wait loop
    go.touch()
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        answers.append(out.split())
    assert len({url for url, _, _ in answers}) == 1
    assert len({run_id for _, run_id, _ in answers}) == 1
    assert sorted(int(n) for _, _, n in answers) == [0, 0, 0, 0, 0, 1]
    if ON_PROC:
        assert len(_server_pids(project)) == 1


def test_stale_socket_file_is_replaced(project: Path) -> None:
    url = embedded_url(project, announce=lambda line: None)
    pid = int((project / ".streamq" / "valkey.pid").read_text())
    client = _client(url)
    try:
        client.set("before-crash", "kept")
    finally:
        client.close()
    # SIGKILL leaves the socket and pid files behind, with nothing listening.
    os.kill(pid, signal.SIGKILL)
    sock = _socket_file(url)
    _wait_refused(sock)
    assert sock.is_socket()

    announced: list[str] = []
    assert embedded_url(project, announce=announced.append) == url
    assert len(announced) == 1
    info = _info(url)
    assert info["process_id"] != pid
    client = _client(url)
    try:
        # The write reached the AOF file before the reply, so the kill did not lose it.
        assert client.get("before-crash") == b"kept"
    finally:
        client.close()


def test_stale_socket_file_without_any_server(project: Path) -> None:
    # A socket file nobody listens on, as if left by a crash before the machine rebooted.
    sock_path = _default_socket(project.resolve())
    (project / ".streamq").mkdir()
    sock_path.parent.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock_path))
    assert sock_path.is_socket()
    announced: list[str] = []
    url = embedded_url(project, announce=announced.append)
    assert _socket_file(url) == sock_path
    assert len(announced) == 1
    assert _info(url)["valkey_version"]


def test_stop_keeps_data_for_the_next_start(project: Path) -> None:
    url = embedded_url(project, announce=lambda line: None)
    pid = _info(url)["process_id"]
    client = _client(url)
    try:
        client.xadd("jobs", {"n": "1"})
        client.set("k", "v")
    finally:
        client.close()

    assert stop_embedded(project) is True
    # stop_embedded returns once the process is gone.
    if ON_PROC:
        assert not _server_pids(project)
    assert not (project / ".streamq" / "valkey.pid").exists()
    assert stop_embedded(project) is False

    announced: list[str] = []
    assert embedded_url(project, announce=announced.append) == url
    assert len(announced) == 1
    assert _info(url)["process_id"] != pid
    client = _client(url)
    try:
        assert client.get("k") == b"v"
        assert client.xlen("jobs") == 1
    finally:
        client.close()


def test_stop_without_a_server(project: Path) -> None:
    assert stop_embedded(project) is False
    assert not (project / ".streamq").exists()


def test_missing_project_dir_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        embedded_url(tmp_path / "nope")


def test_a_server_that_cannot_start_raises_with_the_log(project: Path) -> None:
    embedded_url(project, announce=lambda line: None)
    assert stop_embedded(project)
    manifest = project / ".streamq" / "appendonlydir" / "appendonly.aof.manifest"
    manifest.write_text("this is not a manifest\n")
    with pytest.raises(EmbeddedServerError) as excinfo:
        embedded_url(project, announce=lambda line: None)
    message = str(excinfo.value)
    assert "\n" not in message
    assert "valkey.log" in message
    assert "manifest" in message.lower()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_foreground_server(project: Path, sig: signal.Signals) -> None:
    code = "from streamq.server.embedded import run_server_foreground as r; raise SystemExit(r())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=project, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("streamq: running the embedded Valkey "), line
        announced: list[str] = []
        url = embedded_url(project, announce=announced.append)
        assert url in line and [a.split(" (")[0] for a in announced] == [
            f"streamq: using the embedded server of {project.resolve()}"]  # not "started"
        # A second foreground server for the same directory is refused.
        assert run_server_foreground(project) == 1
        client = _client(url)
        try:
            client.set("k", "v")
        finally:
            client.close()
        proc.send_signal(sig)  # forwarded to the server, which shuts down cleanly
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert stop_embedded(project) is False
    url = embedded_url(project, announce=lambda line: None)
    client = _client(url)
    try:
        assert client.get("k") == b"v"
    finally:
        client.close()


def test_foreground_refuses_while_a_background_server_runs(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = embedded_url(project, announce=lambda line: None)
    assert run_server_foreground(project) == 1
    assert url in capsys.readouterr().err


NOBODY = 65534  # "another local user": the tests run as root, so they can chown to it


@pytest.fixture
def own_tempdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp dir of the test's own, so squatting it leaves the real per-user dir alone."""
    path = Path(tempfile.mkdtemp(prefix="sq-", dir="/tmp"))  # short: the socket must fit
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _FakeServer:
    """Another user's "server" on a unix socket: answers +PONG to anything, counts connections."""

    def __init__(self, path: Path) -> None:
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(str(path))
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                while conn.recv(65536):
                    conn.sendall(b"+PONG\r\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


def _assert_refused(excinfo: pytest.ExceptionInfo[EmbeddedServerError], path: Path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message and "STREAMQ_URL" in message


@pytest.mark.parametrize("squat", ["socket-owner", "dir-owner"])
def test_a_socket_another_user_could_have_placed_is_refused(
    project: Path, own_tempdir: Path, squat: str
) -> None:
    # Another user got there first: a listening socket at the path streamq would use.
    sock = _default_socket(project.resolve())
    if sock.parent != own_tempdir:  # the per-user temp dir, or .streamq/ for a short path
        sock.parent.mkdir(mode=0o700)
    fake = _FakeServer(sock)
    try:
        if squat == "socket-owner":
            os.chown(sock, NOBODY, NOBODY)
            culprit = sock
        else:
            os.chown(sock.parent, NOBODY, NOBODY)
            culprit = sock.parent
        for call in (embedded_url, stop_embedded):
            with pytest.raises(EmbeddedServerError) as excinfo:
                call(project)  # type: ignore[operator]
            _assert_refused(excinfo, culprit)
        assert fake.connections == 0  # refused on ownership, without connecting
        assert not _server_pids(project) if ON_PROC else True
    finally:
        fake.close()
        sock.unlink()
        _kill_leftovers(project)
        if sock.parent != own_tempdir:
            shutil.rmtree(sock.parent)


# A dir of ours at 0777 is tightened instead (tests/test_hardening.py).
@pytest.mark.parametrize("mode", [0o700], ids=["owner-nobody"])
def test_a_squatted_socket_dir_is_refused_before_starting(
    project: Path, own_tempdir: Path, mode: int
) -> None:
    # The directory the socket would go into exists already, empty, but is not ours alone.
    sock = _default_socket(project.resolve())
    if sock.parent == own_tempdir:
        sock = own_tempdir / f"streamq-{os.getuid()}" / sock.name  # where it must go now
    sock.parent.mkdir()
    os.chmod(sock.parent, mode)
    if mode == 0o700:
        os.chown(sock.parent, NOBODY, NOBODY)
    try:
        with pytest.raises(EmbeddedServerError) as excinfo:
            embedded_url(project, announce=lambda line: None)
        _assert_refused(excinfo, sock.parent)
        assert not sock.exists()
        if ON_PROC:
            assert not _server_pids(project)
    finally:
        _kill_leftovers(project)  # what the code before this check started there
        shutil.rmtree(sock.parent)


def _assert_private(path: Path) -> None:
    st = path.lstat()
    assert st.st_uid == os.getuid(), path
    assert st.st_mode & 0o077 == 0, f"{path} has mode {stat.filemode(st.st_mode)}"


@pytest.mark.parametrize("state_dir", ["new", "existing-0755"])
def test_the_state_is_private_to_the_user(project: Path, state_dir: str) -> None:
    state = project / ".streamq"
    if state_dir == "existing-0755":  # as created by an earlier streamq under umask 022
        state.mkdir(mode=0o755)
        os.chmod(state, 0o755)
    url = embedded_url(project, announce=lambda line: None)
    client = _client(url)
    try:
        client.set("k", "v")
        client.bgrewriteaof()  # a fresh base file and manifest, as after a long uptime
        deadline = time.monotonic() + 10
        while client.info("persistence")["aof_rewrite_in_progress"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client.xadd("jobs", {"args": "secret"})  # in the AOF file before the reply
    finally:
        client.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    aof_dir = state / "appendonlydir"
    aofs = list(aof_dir.iterdir())
    assert any(f.name.endswith(".incr.aof") and f.stat().st_size for f in aofs), aofs
    files = [*state.iterdir(), *aofs]
    assert {"valkey.conf", "valkey.log", "valkey.pid", "lock"} <= {f.name for f in files}
    for path in files:
        _assert_private(path)
    sock = _socket_file(url)
    _assert_private(sock.parent)
    _assert_private(sock)
