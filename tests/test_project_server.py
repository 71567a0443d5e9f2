"""One embedded server per project, and it says where it is (issue 11, point 2).

Real servers and real processes: the project is found from any subdirectory, each
process says once which server it uses, read-only commands never start a server,
``streamq server --list`` shows the running ones, the demo leaves none behind, and a
worker whose embedded server was stopped starts it again. The list of running servers
lives in a cache dir of the test's own (``XDG_CACHE_HOME``), never the developer's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamq.base import keys
from streamq.server.embedded import embedded_url, find_project, stop_embedded
from tests.conftest import wait_until
from tests.test_embedded import ON_PROC, _kill_leftovers, _server_pids, _wait_refused

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = """\
from streamq import StreamQ

app = StreamQ()


@app.task
def add(x, y):
    return x + y
"""
NO_SERVER = ("streamq: error: no streamq server is running for {}: start one with "
             "`streamq server` or `streamq worker MODULE`, or set STREAMQ_URL to use "
             "another server")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache dir of the test's own, for this process and the ones it starts."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))
    monkeypatch.delenv("STREAMQ_URL", raising=False)
    return path


@pytest.fixture
def tree() -> Iterator[Path]:
    """A short directory in /tmp (its sockets fit in .streamq/); every server started
    anywhere in it is stopped at the end."""
    root = Path(tempfile.mkdtemp(prefix="sqp-", dir="/tmp")).resolve()
    try:
        yield root
    finally:
        for state in root.rglob(".streamq"):
            with contextlib.suppress(Exception):
                stop_embedded(state.parent, timeout=10)
            _kill_leftovers(state.parent)
        shutil.rmtree(root, ignore_errors=True)


def _env(*paths: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STREAMQ_URL", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO_ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamq", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)


def _project_with_tasks(root: Path) -> Path:
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (root / "mytasks.py").write_text(TASKS)
    return root


def _live_server(project: Path) -> bool:
    """Whether a server answers on the project's socket, or runs from its state dir."""
    sock = project / ".streamq" / "valkey.sock"
    with contextlib.suppress(redis.RedisError):
        # No retries: redis-py's default (10, with backoff) took ~4 s to say "no".
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=2,
                             retry=Retry(NoBackoff(), 0))
        try:
            return bool(client.ping())
        finally:
            client.close()
    return bool(ON_PROC and _server_pids(project))


class _Worker:
    """``streamq worker mytasks`` in ``cwd``, its output in a file."""

    def __init__(self, cwd: Path, log: Path, *args: str) -> None:
        env = _env(cwd)
        env["STREAMQ_HEARTBEAT_S"] = "0.5"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamq", "worker", "mytasks", "-c", "2", *args],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_until(lambda: "worker starting" in self.output(), 30,
                   message=f"worker start; output:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@contextlib.contextmanager
def _worker(cwd: Path, log: Path, *args: str) -> Iterator[_Worker]:
    w = _Worker(cwd, log, *args)
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


# -- discovery -----------------------------------------------------------------------

def test_the_project_is_the_nearest_directory_with_a_marker(tree: Path) -> None:
    deep = tree / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tree / "pyproject.toml").touch()
    assert find_project(deep) == tree
    (tree / "a" / ".git").write_text("gitdir: elsewhere\n")  # a worktree's .git is a file
    assert find_project(deep) == tree / "a"
    (tree / "a" / "b" / ".streamq").mkdir()
    assert find_project(deep) == tree / "a" / "b"
    (deep / "pyproject.toml").touch()  # nearest wins, whichever marker it is
    assert find_project(deep) == deep
    (deep / "pyproject.toml").unlink()
    (deep / ".streamq").touch()  # a file named .streamq is no state dir
    assert find_project(deep) == tree / "a" / "b"


def test_without_any_marker_the_project_is_the_working_directory(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tree / "x" / "y"
    here.mkdir(parents=True)
    for up in (tree, *tree.parents):
        if any((up / m).exists() for m in (".streamq", "pyproject.toml", ".git")):
            pytest.skip(f"{up} has a project marker")
    assert find_project(here) == here
    monkeypatch.chdir(here)
    assert find_project() == here


def test_a_producer_in_a_subdirectory_reaches_the_project_worker(
        tree: Path, tmp_path: Path) -> None:
    project = _project_with_tasks(tree)
    deep = project / "scripts" / "cron"
    deep.mkdir(parents=True)
    with _worker(project, tmp_path / "worker.log", "--log-format", "json") as w:
        url = f"unix://{project}/.streamq/valkey.sock"
        logged = [json.loads(line) for line in w.output().splitlines() if line.startswith("{")]
        assert any(d["message"].startswith("started the embedded Valkey ") and
                   f"server of {project} at {url}" in d["message"] for d in logged), logged
        assert "streamq: started" not in w.output()  # a log line, in the worker's format
        producer = (
            "from streamq import StreamQ\n"
            "from mytasks import add\n"
            "print(add.delay(2, 3).get(timeout=30))\n"
            "other = StreamQ()\n"  # a second app of the same process says nothing more
            "print(other.send_by_name('mytasks.add', (4, 5)).get(timeout=30))\n"
        )
        out = subprocess.run([sys.executable, "-c", producer], cwd=deep, env=_env(project),
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["5", "9"]
        assert out.stderr == f"streamq: using the embedded server of {project} ({url})\n"
    assert not (deep / ".streamq").exists() and not (project / "scripts" / ".streamq").exists()


def test_the_server_command_works_from_a_subdirectory(tree: Path) -> None:
    (tree / ".git").mkdir()
    sub = tree / "src" / "pkg"
    sub.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "streamq", "server"], cwd=sub, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"server of {tree} at unix://{tree}/.streamq/valkey.sock" in line, line
        assert _live_server(tree)
        stopped = _cli(sub, "server", "--stop")
        assert stopped.returncode == 0
        assert stopped.stdout == f"stopped the embedded server of {tree}\n"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert not (sub / ".streamq").exists()
    again = _cli(sub, "server", "--stop")
    assert again.stdout == f"no embedded server is running for {tree}\n"


# -- read-only commands ----------------------------------------------------------------

READ_ONLY = [["status"], ["status", "--json"], ["result", "0" * 32 + "@default"],
             ["result", "some-id", "--json"], ["dead", "list"], ["dead", "list", "--json"],
             ["dead", "requeue", "default", "--all"]]


def test_read_only_commands_never_start_a_server(tree: Path) -> None:
    (tree / "pyproject.toml").touch()
    sub = tree / "sub"
    sub.mkdir()
    for args in READ_ONLY:
        out = _cli(sub, *args)
        assert out.returncode == 1, (args, out.stderr)
        assert out.stderr == NO_SERVER.format(tree) + "\n", args
        assert out.stdout == "", args
    purge = _cli(sub, "dead", "purge", "default")  # refused one way or another
    assert purge.returncode != 0
    assert not (tree / ".streamq").exists() and not (sub / ".streamq").exists()
    assert not _live_server(tree)


def test_read_only_commands_read_the_running_server(tree: Path) -> None:
    (tree / "pyproject.toml").touch()
    sub = tree / "sub"
    sub.mkdir()
    url = embedded_url(tree, announce=lambda line: None)
    status = _cli(sub, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["server"]  # stdout is JSON and nothing else
    assert status.stderr == f"streamq: using the embedded server of {tree} ({url})\n"
    missing = _cli(sub, "result", "nope")
    assert missing.returncode == 1 and "no record for task nope" in missing.stderr
    assert "no streamq server is running" not in missing.stderr


# -- the list of running servers --------------------------------------------------------

def _listed() -> list[dict[str, object]]:
    out = _cli(REPO_ROOT, "server", "--list", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_server_list_shows_running_servers_and_forgets_gone_ones(tree: Path,
                                                                  cache: Path) -> None:
    one, two = tree / "one", tree / "two"
    for p in (one, two):
        (p / "sub").mkdir(parents=True)
        (p / "pyproject.toml").touch()
    assert _cli(tree, "server", "--list").stdout == "no embedded streamq servers are running\n"
    urls = {p: embedded_url(p, announce=lambda line: None) for p in (one, two)}
    pids = {p: int((p / ".streamq" / "valkey.pid").read_text()) for p in (one, two)}
    listed = _listed()
    assert [(d["project"], d["url"], d["pid"]) for d in listed] == [
        (str(p), urls[p], pids[p]) for p in (one, two)]
    assert all(isinstance(d["uptime_s"], int) for d in listed)
    table = _cli(tree, "server", "--list")
    for shown in (str(one), urls[two], str(pids[one])):
        assert shown in table.stdout
    assert "streamq server --stop --all" in table.stdout

    os.kill(pids[one], signal.SIGKILL)  # gone without a word: pruned when listed
    _wait_refused(one / ".streamq" / "valkey.sock")
    assert [d["project"] for d in _listed()] == [str(two)]
    assert len(list((cache / "streamq" / "servers").glob("*.json"))) == 1

    fg = subprocess.Popen([sys.executable, "-m", "streamq", "server"], cwd=one / "sub",
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert fg.stdout is not None and "running the embedded" in fg.stdout.readline()
        fg_pid = int((one / ".streamq" / "valkey.pid").read_text())  # the child of fg
        assert fg_pid != pids[one]
        assert [(d["project"], d["pid"]) for d in _listed()] == [
            (str(one), fg_pid), (str(two), pids[two])]
        stopped = _cli(tree, "server", "--stop", "--all")
        assert stopped.returncode == 0
        assert stopped.stdout.splitlines() == [f"stopped the embedded server of {p}"
                                               for p in (one, two)]
        assert fg.wait(30) == 0
    finally:
        if fg.poll() is None:
            fg.kill()
        fg.communicate()
    assert _listed() == []
    assert list((cache / "streamq" / "servers").glob("*.json")) == []
    assert not _live_server(one) and not _live_server(two)


def test_the_list_is_best_effort(tree: Path, cache: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    servers = cache / "streamq" / "servers"
    servers.mkdir(parents=True)
    (servers / "garbage.json").write_text("{not json")
    (servers / "gone.json").write_text(json.dumps(
        {"project": str(tree), "socket": str(tree / "nope.sock"), "pid": 1, "started": 0}))
    assert _listed() == []
    assert list(servers.iterdir()) == []  # both pruned
    blocked = tree / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # no cache dir to be had
    url = embedded_url(tree, announce=lambda line: None)  # starts all the same
    assert _live_server(tree) and url.endswith("/.streamq/valkey.sock")
    assert _listed() == []
    assert stop_embedded(tree)


def test_server_options_that_do_not_go_together(tree: Path) -> None:
    for args in (["--all"], ["--stop", "--list"], ["--json"]):
        out = _cli(tree, "server", *args)
        assert out.returncode == 2, args
        assert out.stderr.startswith("streamq: error:") and len(out.stderr.splitlines()) == 1
    assert not (tree / ".streamq").exists()


# -- the demo ----------------------------------------------------------------------------

def _demo_dir(tree: Path) -> Path:
    (tree / "worker").mkdir()
    shutil.copy(REPO_ROOT / "worker" / "tasks.py", tree / "worker" / "tasks.py")
    return tree


def test_the_demo_stops_the_server_it_started(tree: Path) -> None:
    project = _demo_dir(tree)
    out = _cli(project, "demo", "-n", "12")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 succeeded, 0 failed" in " ".join(out.stdout.split())
    assert f"stopped the embedded server that the demo started for {project} " in out.stdout
    assert "streamq: started the embedded Valkey" in out.stderr
    assert not _live_server(project)
    assert _listed() == []


def test_the_demo_leaves_a_running_server_running(tree: Path) -> None:
    project = _demo_dir(tree)
    url = embedded_url(project, announce=lambda line: None)
    pid = int((project / ".streamq" / "valkey.pid").read_text())
    out = _cli(project, "demo", "-n", "9")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"the embedded server of {project} was already running and keeps running " \
           "(stop it with: streamq server --stop)" in out.stdout
    assert out.stderr.splitlines()[0] == f"streamq: using the embedded server of {project} ({url})"
    assert "started the embedded" not in out.stderr
    assert _live_server(project)
    assert int((project / ".streamq" / "valkey.pid").read_text()) == pid


# -- a worker whose server was stopped ------------------------------------------------------

_NOISE = ("Server unavailable", "will retry", "heartbeat failed")


@pytest.mark.parametrize("how", ["server --stop", "SIGKILL"])
def test_a_worker_starts_its_stopped_embedded_server_again(tree: Path, tmp_path: Path,
                                                             how: str) -> None:
    project = _project_with_tasks(tree)
    url = f"unix://{project}/.streamq/valkey.sock"
    pid_file = project / ".streamq" / "valkey.pid"
    with _worker(project, tmp_path / "worker.log") as w:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            stream = keys.stream("streamq", "default")
            wait_until(lambda: client.exists(stream) and client.xinfo_groups(stream), 10,
                       message="the worker's consumer group")
        finally:
            client.close()
        first = int(pid_file.read_text())
        before = len(w.output().splitlines())
        if how == "SIGKILL":
            os.kill(first, signal.SIGKILL)
        else:
            stopped = _cli(project, "server", "--stop")
            assert stopped.returncode == 0
            assert stopped.stdout.startswith(f"stopped the embedded server of {project} (it "
                                             "had "), stopped.stdout
            assert "a `streamq worker` among them starts it again" in stopped.stdout
        wait_until(lambda: _live_server(project) and pid_file.exists() and
                   int(pid_file.read_text()) != first, 15,
                   message=f"the server back; worker output:\n{w.output()}")
        producer = "from mytasks import add; print(add.delay(20, 22).get(timeout=30))"
        out = subprocess.run([sys.executable, "-c", producer], cwd=project, env=_env(project),
                             capture_output=True, text=True, timeout=60, check=False)
        assert (out.returncode, out.stdout) == (0, "42\n"), out.stderr
        time.sleep(3)  # time enough for a loop that warns twice a second to show it
        after = w.output().splitlines()[before:]
        restarted = [ln for ln in after if "had stopped; started it again" in ln]
        assert len(restarted) == 1, after
        assert f"The embedded server of {project} had stopped; started it again at {url}." \
            in restarted[0]
        noise = [ln for ln in after if any(n in ln for n in _NOISE)]
        assert len(noise) <= 4, noise  # the odd housekeeping call that met the gap
    assert w.proc.returncode == 0
    assert [d["project"] for d in _listed()] == [str(project)]


def test_a_worker_given_the_url_leaves_the_server_stopped(tree: Path, tmp_path: Path) -> None:
    project = _project_with_tasks(tree)
    url = embedded_url(project, announce=lambda line: None)
    with _worker(project, tmp_path / "worker.log", "--url", url) as w:
        assert stop_embedded(project)
        wait_until(lambda: "Server unavailable" in w.output(), 15, message="the warning")
        time.sleep(1.5)
        assert not _live_server(project)
        assert "started it again" not in w.output()
