"""``streamq server --cluster N``: a local Valkey cluster from the embedded binary.

Real processes only: the CLI starts a 3-primary cluster in a project of the test's
own, redis-py's cluster client finds every slot covered and reads back what it wrote,
a second start reuses it, ``--stop`` leaves no node process and no open port, and a
start again (through the Python API) comes back on the same ports with the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from streamq.base.errors import EmbeddedServerError
from streamq.server.localcluster import (
    find_local_cluster,
    start_local_cluster,
    stop_local_cluster,
)
from tests.conftest import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short project dir in /tmp (its sockets fit), with a cache dir of its own;
    every node started in it is stopped at the end."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    for name in [k for k in os.environ if k.startswith("STREAMQ_")]:
        monkeypatch.delenv(name)
    root = Path(tempfile.mkdtemp(prefix="sqc-", dir="/tmp")).resolve()
    (root / ".git").mkdir()
    try:
        yield root
    finally:
        with contextlib.suppress(Exception):
            stop_local_cluster(root, timeout=10)
        for pid in _node_pids(root):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMQ_") and k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "streamq", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def _node_pids(project: Path) -> set[int]:
    """Live valkey-server processes whose working directory is in the project's cluster dir."""
    state = str(project / ".streamq" / "cluster")
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (os.readlink(entry / "exe").endswith("valkey-server")
                    and os.readlink(entry / "cwd").startswith(state)
                    and (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z"):
                pids.add(int(entry.name))
    return pids


def _refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _ports(url: str) -> list[int]:
    assert url.startswith("redis+cluster://")
    return [int(hp.rpartition(":")[2]) for hp in url.removeprefix("redis+cluster://").split(",")]


def test_cluster_starts_is_reused_stops_and_keeps_its_data(project: Path) -> None:
    (project / "sub").mkdir()
    out = _cli(project / "sub", "server", "--cluster", "3")  # the project is found upwards
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("streamq: started a local Valkey ")
    assert f"cluster of 3 primaries for {project}" in lines[0]
    url = lines[1]
    ports = _ports(url)
    assert len(set(ports)) == 3
    assert [ln.split()[:3] for ln in lines[2:]] == [
        ["node", str(i + 1), f"127.0.0.1:{p}"] for i, p in enumerate(ports)]
    pids = _node_pids(project)
    assert len(pids) == 3

    client = RedisCluster(host="127.0.0.1", port=ports[0], socket_timeout=5)
    try:
        assert client.cluster_info()["cluster_state"] == "ok"
        primaries = client.get_primaries()
        assert sorted(n.port for n in primaries) == sorted(ports)
        covered: set[int] = set()
        for first, last, *_ in client.execute_command("CLUSTER SLOTS", target_nodes="random"):
            covered.update(range(first, last + 1))
        assert covered == set(range(16384))
        for key in ("a", "b", "c", "{x}1"):  # spread over the nodes
            client.set(key, f"value-{key}")
        assert client.get("{x}1") == b"value-{x}1"
    finally:
        client.close()
    for port in ports:
        with redis.Redis(port=port, socket_timeout=5) as node:
            conf = node.config_get("*")
            assert node.info("cluster")["cluster_enabled"] == 1
        assert (conf["appendonly"], conf["maxmemory-policy"]) == ("yes", "noeviction")
        assert (conf["bind"], conf["protected-mode"]) == ("127.0.0.1", "yes")

    again = _cli(project, "server", "--cluster", "3")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == (
        f"streamq: a local cluster of 3 primaries already runs for {project}; reusing it")
    assert again.stdout.splitlines()[1] == url
    assert _node_pids(project) == pids

    listed = json.loads(_cli(project, "server", "--list", "--json").stdout)
    assert [(d["project"], d["url"]) for d in listed] == [(str(project), url)]

    stopped = _cli(project, "server", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == (f"stopped the local cluster of {project} (3 primaries; "
                              "its data stays)\n")
    assert not any(Path(f"/proc/{pid}").exists() and pid in _node_pids(project) for pid in pids)
    assert _node_pids(project) == set()
    assert all(_refuses(p) for p in ports)
    assert json.loads(_cli(project, "server", "--list", "--json").stdout) == []
    assert find_local_cluster(project) is None

    cluster = start_local_cluster(project, 3)  # the same code, from Python: comes back
    assert cluster.started and cluster.url == url
    assert [n.port for n in cluster.nodes] == ports
    client = RedisCluster(host="127.0.0.1", port=ports[1], socket_timeout=5)
    try:
        assert client.get("a") == b"value-a"  # from the AOF
    finally:
        client.close()
    assert cluster.stop()
    wait_until(lambda: _node_pids(project) == set(), timeout=10)
    assert not cluster.stop()


@pytest.mark.parametrize("primaries", ["0", "1", "2", "10", "x"])
def test_a_cluster_size_out_of_bounds_is_one_line(project: Path, primaries: str) -> None:
    out = _cli(project, "server", "--cluster", primaries)
    assert out.returncode == 2
    assert out.stderr.startswith("streamq: error:") and len(out.stderr.splitlines()) == 1
    assert not (project / ".streamq").exists()


def test_a_start_that_times_out_says_so_and_stops_what_it_started(project: Path) -> None:
    # cluster_state:ok takes the nodes about two seconds: a tenth of one is too short.
    late = r"did not (come up|reach cluster_state:ok within 0.1s)"
    with pytest.raises(EmbeddedServerError, match=late):
        start_local_cluster(project, 3, timeout=0.1)
    assert _node_pids(project) == set()
    assert find_local_cluster(project) is None
