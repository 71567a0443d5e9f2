"""The embedded server is for its user alone: real processes under a real umask.

Each test runs the CLI (or a Python process that starts the server) in a subprocess
under ``umask 000``, in a project and a temp dir of its own, then reads what the
files on disk say, what the server itself says (``CONFIG GET``) and what the kernel
says (``/proc/net/tcp*``: no TCP listener belongs to its pid).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamq.server.localcluster import stop_local_cluster
from tests.conftest import wait_until
from tests.servers import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534  # "another local user": the tests run as root, so they can chown to it
TIGHTENED = "open to other users; made it 0700"

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


class Project:
    """A project dir (short or long path) and a temp dir of its own for the socket."""

    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.root, self.tmpdir = root, tmpdir
        self.state = root / ".streamq"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMQ_")}
        env.update(PYTHONPATH=str(REPO_ROOT), TMPDIR=str(self.tmpdir), PYTHONUNBUFFERED="1")
        return env

    def run(self, *args: str, umask: str = "000") -> subprocess.CompletedProcess[str]:
        """``streamq ARGS`` under ``umask``, to its end."""
        return subprocess.run(["sh", "-c", f'umask {umask}; exec "$@"', "sh", sys.executable,
                               "-m", "streamq", *args], cwd=self.root, env=self.env(),
                              capture_output=True, text=True, timeout=60)

    def start_python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable,
                               "-c", code], cwd=self.root, env=self.env(),
                              capture_output=True, text=True, timeout=60)

    def socket(self) -> Path:
        """Where the server's socket is (or will be: streamq's rule, worked out again)."""
        local = self.state / "valkey.sock"
        if len(os.fsencode(local)) <= 100:
            return local
        found = list((self.tmpdir / f"streamq-{os.getuid()}").glob("streamq-*.sock"))
        return found[0] if found else self.tmpdir / f"streamq-{os.getuid()}" / "x.sock"

    def pid(self) -> int:
        return int((self.state / "valkey.pid").read_text())


@pytest.fixture(params=["short", "long"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """"long": the socket goes to the per-user dir under TMPDIR; "short": into .streamq/."""
    tmpdir = Path(tempfile.mkdtemp(prefix="sqh-", dir="/tmp"))
    if request.param == "long":
        root = tmp_path / ("a-long-project-directory-name-for-the-socket-" * 2)
        root.mkdir()
    else:
        root = Path(tempfile.mkdtemp(prefix="sqh-", dir="/tmp"))
    (root / ".git").mkdir()
    proj = Project(root.resolve(), tmpdir)
    try:
        yield proj
    finally:
        with contextlib.suppress(Exception):
            stop_local_cluster(proj.root, timeout=10)
        subprocess.run([sys.executable, "-m", "streamq", "server", "--stop"], cwd=proj.root,
                       env=proj.env(), capture_output=True, timeout=60)
        with contextlib.suppress(OSError, ValueError):
            os.kill(proj.pid(), signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)
        if request.param == "short":
            shutil.rmtree(root, ignore_errors=True)


def tcp_listeners(pid: int) -> list[str]:
    """``ADDRESS:PORT`` (hex, as the kernel writes it) of every TCP socket in LISTEN
    state whose inode is one of ``pid``'s open files."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                    found.append(cols[1])
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_private_tree(proj: Project) -> None:
    """Every directory 0700, every file without a bit for group or others, all ours."""
    sock = proj.socket()
    assert mode(proj.state) == 0o700
    assert mode(sock.parent) == 0o700
    assert stat.S_ISSOCK(sock.lstat().st_mode) and mode(sock) == 0o600, oct(mode(sock))
    for root, dirs, files in os.walk(proj.state):
        for name in dirs:
            assert mode(Path(root, name)) == 0o700, Path(root, name)
        for name in files:
            path = Path(root, name)
            assert path.lstat().st_uid == os.getuid(), path
            assert mode(path) & 0o077 == 0, f"{path}: {oct(mode(path))}"


def assert_unix_only(proj: Project) -> None:
    sock = proj.socket()
    with redis.Redis(unix_socket_path=str(sock), socket_timeout=5) as client:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("tls-port") == {"tls-port": "0"}
        assert client.config_get("unixsocketperm") == {"unixsocketperm": "600"}
        assert client.config_get("bind")["bind"].split() == ["127.0.0.1", "-::1"]
        pid = int(client.info("server")["process_id"])
    assert pid == proj.pid()
    assert tcp_listeners(pid) == []


def test_tcp_listeners_finds_a_tcp_server(tmp_path: Path) -> None:
    # The check above must be able to fail: a server on a TCP port is found.
    with ServerProcess("valkey", tmp_path / "tcp") as srv:
        listening = tcp_listeners(srv.pid)
        assert len(listening) == 1
        assert int(listening[0].rpartition(":")[2], 16) == srv.port


@pytest.mark.parametrize("before", ["missing", "0777", "0755"])
def test_streamq_server_under_umask_000(project: Project, before: str) -> None:
    if before != "missing":
        project.state.mkdir()
        os.chmod(project.state, int(before, 8))
        if project.socket().parent != project.state:  # the per-user dir, just as open
            project.socket().parent.mkdir()
            os.chmod(project.socket().parent, int(before, 8))
    cmd = ["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable, "-m", "streamq", "server"]
    fg = subprocess.Popen(cmd, cwd=project.root, env=project.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        assert fg.stdout is not None and fg.stderr is not None
        running, listens = fg.stdout.readline(), fg.stdout.readline()
        assert running.startswith("streamq: running the embedded Valkey "), running
        sock = project.socket()
        assert listens == (f"streamq: it listens on the unix socket {sock} only, no TCP "
                           "port; the socket is 0600 in a 0700 directory, so only root "
                           f"(uid {os.getuid()}) can connect\n")
        assert_private_tree(project)
        assert_unix_only(project)
        # A second command neither tightens again nor says so again.
        status = project.run("status")
        assert status.returncode == 0, status.stderr
        assert TIGHTENED not in status.stderr
        again = project.run("server")  # shows the one that runs, and who can reach it
        assert again.returncode == 1
        assert again.stderr == (f"streamq: an embedded server of {project.root} already runs "
                                f"at unix://{sock}; {listens.removeprefix('streamq: ')}")
        fg.send_signal(signal.SIGTERM)
        assert fg.wait(30) == 0
        told = fg.stderr.read()
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()
        for pipe in (fg.stdout, fg.stderr):
            pipe.close() if pipe is not None else None
    opened = [line for line in told.splitlines() if TIGHTENED in line]
    if before == "missing":
        assert opened == []
    else:
        dirs = {project.state, project.socket().parent}  # one line per directory, once
        assert sorted(opened) == sorted(
            f"streamq: {d} was mode {before[1:]}, {TIGHTENED}" for d in dirs)


def test_a_server_started_on_demand_under_umask_000(project: Project) -> None:
    # The daemonized start that a producer or a worker makes, not `streamq server`.
    out = project.start_python("from streamq.server.embedded import embedded_url; "
                               "print(embedded_url())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("unix://")
    assert_private_tree(project)
    assert_unix_only(project)
    with redis.Redis(unix_socket_path=str(project.socket()), socket_timeout=5) as client:
        client.xadd("jobs", {"args": "x"})
        client.bgrewriteaof()  # rewritten AOF files must be as private
        wait_until(lambda: not client.info("persistence")["aof_rewrite_in_progress"])
    assert_private_tree(project)


@pytest.mark.parametrize("planted", ["file-of-another-user", "dir-of-another-user"])
def test_what_another_user_put_in_an_open_state_dir_is_refused(project: Project,
                                                                 planted: str) -> None:
    project.state.mkdir()
    os.chmod(project.state, 0o777)
    culprit = project.state / ("valkey.conf" if planted.startswith("file") else "appendonlydir")
    culprit.mkdir() if planted.startswith("dir") else culprit.write_text("port 6379\n")
    os.chown(culprit, NOBODY, NOBODY)
    out = project.run("server")
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert out.stderr.splitlines()[-1] == (
        f"streamq: error: refusing {culprit}: it belongs to uid {NOBODY} and was put in "
        f"{project.state} while it was writable by other users, so another user may read "
        "or change the server's state; remove it, or set STREAMQ_URL to use another server")
    assert "Traceback" not in out.stderr
    assert mode(project.state) == 0o700  # closed before it was looked into
    assert not (project.state / "valkey.pid").exists()


def test_a_symlinked_config_is_refused_and_its_target_untouched(project: Project,
                                                                 tmp_path: Path) -> None:
    project.state.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    (project.state / "valkey.conf").symlink_to(target)
    out = project.run("server")
    assert out.returncode == 1, out
    assert out.stderr.strip() == (
        f"streamq: error: refusing {project.state / 'valkey.conf'}: it cannot be opened as "
        "a file of yours (Too many levels of symbolic links), so it may lead to another "
        "user's file; remove it, or set STREAMQ_URL to use another server")
    assert target.read_text() == "keep me\n"
    assert not (project.state / "valkey.pid").exists()


@pytest.mark.parametrize("project", ["short"], indirect=True)
def test_the_local_cluster_says_it_listens_on_tcp(project: Project) -> None:
    out = project.run("server", "--cluster", "3")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[-1] == (
        "streamq: the cluster listens on TCP ports of 127.0.0.1 (loopback, one per node "
        "plus its bus port), not only on unix sockets: any user or process of this "
        "machine can connect to it, with no password")
    assert project.run("server", "--stop").returncode == 0
