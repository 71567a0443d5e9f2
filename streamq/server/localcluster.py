"""A local Valkey cluster for a project: ``streamq server --cluster N``.

N primaries (``MIN_PRIMARIES``..``MAX_PRIMARIES``) of the embedded Valkey binary (the
one ``embedded.py`` starts), each in cluster mode on a free loopback port with its own
cluster-bus port, its own directory under ``<project>/.streamq/cluster/node-<i>/``
(config, ``nodes.conf``, AOF, log, pid), AOF on, ``maxmemory-policy noeviction``,
``bind 127.0.0.1`` with protected mode, daemonized so it outlives the process that
started it. The 16,384 slots are split evenly (``CLUSTER ADDSLOTSRANGE``), the nodes
meet (``CLUSTER MEET``), and the start returns once every node reports
``cluster_state:ok`` (or raises ``EmbeddedServerError`` and stops what it started).

Each node also listens on a 0700 unix socket, which is how streamq itself manages
it (PING, CLUSTER, SHUTDOWN, through ``private.call``) and how ``--list`` tells it
runs. Clients reach it through the URL ``redis+cluster://127.0.0.1:P1,...``: loopback
TCP, which other users of this machine can reach too, so it is for development and
tests, not for data of others.

The ports are recorded in ``.streamq/cluster/cluster.json`` once the cluster first
reaches ``ok``. A stopped cluster starts again on the same ports and directories, so
it keeps its slots and its data (the AOF). An ``flock`` on ``.streamq/cluster/lock``
makes concurrent starts and stops of one project's cluster take turns.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import ConfigurationError, EmbeddedServerError
from . import private, projects
from .embedded import _binary, _locked, _q, _start_failed
from .projects import STATE_DIR, PathArg

__all__ = ["MAX_PRIMARIES", "MIN_PRIMARIES", "ClusterNode", "LocalCluster",
           "find_local_cluster", "start_local_cluster", "stop_local_cluster"]

CLUSTER_DIR = "cluster"
"""The cluster's state directory, inside the project's ``.streamq/``."""
MIN_PRIMARIES = 3
"""Redis Cluster needs a majority of primaries to agree; fewer than 3 has none to spare."""
MAX_PRIMARIES = 9
SLOTS = 16384
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
_MAX_SOCKET_PATH = 100
_PORT_TAKEN = "Failed listening on port"


@dataclass(frozen=True)
class ClusterNode:
    """One primary of a local cluster."""

    index: int
    port: int
    bus_port: int
    first_slot: int
    last_slot: int
    dir: Path
    socket: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Its process id while it runs (from its pid file), else None."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.dir / "valkey.pid").read_text())
            return pid if private.pid_alive(pid) else None
        return None

    def answers(self) -> bool:
        return private.answers(self.socket)

    def call(self, *args: str, timeout: float = 2.0) -> str:
        """One command over its unix socket; the raw reply ("" when nothing answered)."""
        return (private.call(self.socket, *args, timeout=timeout) or b"").decode(
            errors="replace")

    def cluster_info(self) -> dict[str, str]:
        text = self.call("CLUSTER", "INFO")
        return dict(line.strip().partition(":")[::2] for line in text.splitlines() if ":" in line)


@dataclass(frozen=True)
class LocalCluster:
    """A project's local cluster; ``started``: whether the call that returned it started it."""

    project: Path
    nodes: tuple[ClusterNode, ...]
    started: bool = False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    @property
    def state_dir(self) -> Path:
        return self.project / STATE_DIR / CLUSTER_DIR

    def stop(self, timeout: float = 30.0) -> bool:
        """Shut every node down, keeping its data; whether any was running."""
        return stop_local_cluster(self.project, timeout=timeout)


# -- where things are --------------------------------------------------------------------

def _state(project: Path, *, create: bool) -> Path:
    cdir = project / STATE_DIR / CLUSTER_DIR
    if create:
        private.private_dir(project / STATE_DIR, create=True)
        private.private_dir(cdir, create=True)
    return cdir


def _socket_for(node_dir: Path, index: int) -> Path:
    local = node_dir / "valkey.sock"
    if len(os.fsencode(local)) <= _MAX_SOCKET_PATH:
        return local
    digest = hashlib.sha1(os.fsencode(node_dir.parent)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"streamq-{os.getuid()}" / f"streamq-{digest}-{index}.sock"


def _split(primaries: int) -> list[tuple[int, int]]:
    """The slot range of each primary: 16,384 split as evenly as it goes."""
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((HOST, 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def _load(project: Path) -> list[ClusterNode] | None:
    """The nodes recorded in ``cluster.json``, or None if no cluster was ever completed."""
    cdir = _state(project, create=False)
    try:
        doc = json.loads((cdir / "cluster.json").read_text())
        return [ClusterNode(i + 1, int(n["port"]), int(n["bus_port"]), int(n["first_slot"]),
                            int(n["last_slot"]), cdir / f"node-{i + 1}", Path(n["socket"]))
                for i, n in enumerate(doc["nodes"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(project: Path, nodes: list[ClusterNode]) -> None:
    doc = {"primaries": len(nodes), "nodes": [
        {"port": n.port, "bus_port": n.bus_port, "first_slot": n.first_slot,
         "last_slot": n.last_slot, "socket": str(n.socket)} for n in nodes]}
    private.write_private(_state(project, create=True) / "cluster.json",
                          json.dumps(doc, indent=1) + "\n")


# -- starting and stopping nodes ---------------------------------------------------------

def _launch(node: ClusterNode) -> None:
    """Write the node's config and start it (daemonized); raise if it exits at once."""
    private.private_dir(node.dir, create=True)
    if node.socket.parent != node.dir:
        private.private_dir(node.socket.parent, create=True)
    if private.usable(node.socket):
        node.socket.unlink()  # left behind by a node that died
    (node.dir / "valkey.pid").unlink(missing_ok=True)
    conf, log_file = node.dir / "valkey.conf", node.dir / "valkey.log"
    private.write_private(
        conf,
        "# Written by streamq at every start of the local cluster; edits are lost.\n"
        f"port {node.port}\nbind {HOST}\nprotected-mode yes\n"
        f"cluster-enabled yes\ncluster-port {node.bus_port}\n"
        "cluster-config-file nodes.conf\ncluster-node-timeout 5000\n"
        f"unixsocket {_q(node.socket)}\nunixsocketperm 700\ndir {_q(node.dir)}\n"
        f"pidfile {_q(node.dir / 'valkey.pid')}\nlogfile {_q(log_file)}\n"
        "daemonize yes\nappendonly yes\nappendfsync everysec\n"
        'save ""\nmaxmemory-policy noeviction\n',
    )
    out = private.open_private(log_file, append=True)
    try:
        proc = subprocess.Popen(
            [_binary(), conf], cwd=node.dir, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, close_fds=True, start_new_session=True, umask=0o077,
        )  # fmt: skip
    finally:
        os.close(out)
    code = proc.wait(timeout=START_TIMEOUT)
    if code != 0:
        raise _start_failed(log_file, f"node {node.index} exited with code {code}")


def _wait_up(node: ClusterNode, deadline: float) -> None:
    """Wait for the node's PONG; raise if it died (a port taken) or the time is up."""
    log_file = node.dir / "valkey.log"
    while time.monotonic() < deadline:
        if node.answers():
            return
        pidfile = node.dir / "valkey.pid"
        if pidfile.exists() and node.pid is None:
            raise _start_failed(log_file, f"node {node.index} (port {node.port}) exited")
        time.sleep(0.05)
    raise _start_failed(log_file, f"node {node.index} (port {node.port}) did not come up")


def _is_ok(nodes: list[ClusterNode]) -> bool:
    for node in nodes:
        info = node.cluster_info()
        if (info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(len(nodes))
                or info.get("cluster_slots_assigned") != str(SLOTS)):
            return False
    return True


def _wait_ok(project: Path, nodes: list[ClusterNode], deadline: float, timeout: float) -> None:
    while time.monotonic() < deadline:
        if _is_ok(nodes):
            return
        time.sleep(0.05)
    states = ", ".join(f"node {n.index}: {n.cluster_info().get('cluster_state', 'down')}"
                       for n in nodes)
    raise EmbeddedServerError(
        f"the local cluster of {project} did not reach cluster_state:ok within "
        f"{timeout:g}s ({states}; see {_state(project, create=False)}/node-*/valkey.log)")


def _shutdown(nodes: list[ClusterNode], timeout: float, *, launched: bool = False) -> bool:
    """Shut the nodes down (SIGKILL one that does not go); whether any was running.

    ``launched``: they were just launched, so a daemon may not have written its pid
    file yet; wait a moment for it rather than leave the node running."""
    pids: dict[int, ClusterNode] = {}
    for node in nodes:
        pidfile, until = node.dir / "valkey.pid", time.monotonic() + 2.0
        launched_here = launched and (node.dir / "valkey.conf").exists()
        while launched_here and not pidfile.exists() and time.monotonic() < until:
            time.sleep(0.02)
        pid = node.pid
        if pid is None:
            if not node.answers():
                continue
            found = private.info(node.socket).get("process_id", "")
            pid = int(found) if found.isdigit() else None
        reply = node.call("SHUTDOWN", timeout=timeout)
        if pid is not None:
            pids[pid] = node
        if reply.startswith("-") and pid is not None:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while private.pid_alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
    return bool(pids)


def _record(cluster: LocalCluster) -> None:
    first = cluster.nodes[0]
    pid = first.pid
    if pid is not None:
        projects.record_server(cluster.project, first.socket, pid, url=cluster.url)


def _forget(project: Path, nodes: list[ClusterNode]) -> None:
    for node in nodes:
        pid = node.pid
        if pid is not None:
            projects.forget_server(project, pid)


# -- the API -----------------------------------------------------------------------------

def find_local_cluster(project_dir: PathArg = None) -> LocalCluster | None:
    """The local cluster of ``project_dir`` (default: the discovered project) if any of
    its nodes runs, else None."""
    project = projects.project_dir(project_dir)
    nodes = _load(project)
    if nodes is None or not any(n.answers() for n in nodes):
        return None
    return LocalCluster(project, tuple(nodes))


def _create(project: Path, primaries: int, timeout: float) -> list[ClusterNode]:
    """A new cluster (lock held): fresh node dirs on free ports, slots split, met, ok."""
    cdir = _state(project, create=True)
    for attempt in range(3):
        for old in cdir.glob("node-*"):  # an attempt that never completed
            shutil.rmtree(old, ignore_errors=True)
        ports = _free_ports(2 * primaries)
        nodes = [ClusterNode(i + 1, ports[2 * i], ports[2 * i + 1], first, last,
                             cdir / f"node-{i + 1}", _socket_for(cdir / f"node-{i + 1}", i + 1))
                 for i, (first, last) in enumerate(_split(primaries))]
        deadline = time.monotonic() + timeout
        try:
            for node in nodes:
                _launch(node)
            for node in nodes:
                _wait_up(node, deadline)
            for node in nodes:
                reply = node.call("CLUSTER", "ADDSLOTSRANGE", str(node.first_slot),
                                  str(node.last_slot))
                if not reply.startswith("+OK"):
                    raise EmbeddedServerError(
                        f"node {node.index} refused its slots: {reply.strip() or 'no reply'}")
            for node in nodes[1:]:
                reply = node.call("CLUSTER", "MEET", HOST, str(nodes[0].port),
                                  str(nodes[0].bus_port))
                if not reply.startswith("+OK"):
                    raise EmbeddedServerError(
                        f"node {node.index} refused CLUSTER MEET: {reply.strip() or 'no reply'}")
            _wait_ok(project, nodes, deadline, timeout)
        except BaseException as exc:
            _shutdown(nodes, timeout=5, launched=True)
            if _PORT_TAKEN in str(exc) and attempt < 2:
                continue  # someone took a port between picking and binding it
            raise
        _save(project, nodes)
        return nodes
    raise AssertionError("unreachable")


def start_local_cluster(project_dir: PathArg = None, primaries: int = 3, *,
                        timeout: float = START_TIMEOUT) -> LocalCluster:
    """Start the local cluster of ``project_dir`` (default: the discovered project) with
    ``primaries`` primaries, or return the one that runs (``started`` False; it keeps
    its own number of primaries). A stopped one starts again on its ports with its data.

    Raises ``ConfigurationError`` for a number of primaries out of bounds, and
    ``EmbeddedServerError`` (having stopped what it started) if the nodes do not come
    up or the cluster does not reach ``cluster_state:ok`` within ``timeout`` seconds.
    """
    if not MIN_PRIMARIES <= primaries <= MAX_PRIMARIES:
        raise ConfigurationError(
            f"a local cluster has {MIN_PRIMARIES} to {MAX_PRIMARIES} primaries, not "
            f"{primaries} (Redis Cluster needs at least {MIN_PRIMARIES} for a majority)")
    project = projects.project_dir(project_dir)
    with _locked(_state(project, create=True)):
        nodes = _load(project)
        if nodes is None:
            cluster = LocalCluster(project, tuple(_create(project, primaries, timeout)), True)
            _record(cluster)
            return cluster
        down = [n for n in nodes if not n.answers()]
        if not down and _is_ok(nodes):
            return LocalCluster(project, tuple(nodes))
        deadline = time.monotonic() + timeout
        try:
            for node in down:
                _launch(node)
            for node in down:
                _wait_up(node, deadline)
            _wait_ok(project, nodes, deadline, timeout)
        except BaseException as exc:
            _shutdown(down, timeout=5, launched=True)
            if _PORT_TAKEN in str(exc):
                raise EmbeddedServerError(
                    f"{exc}; its port is taken now: stop what uses it, or remove "
                    f"{_state(project, create=False)} to start a new cluster (its data "
                    "is lost)") from None
            raise
        cluster = LocalCluster(project, tuple(nodes), started=bool(down))
        _record(cluster)
        return cluster


def stop_local_cluster(project_dir: PathArg = None, timeout: float = 30.0) -> bool:
    """Shut down every node of the local cluster of ``project_dir`` (default: the
    discovered project), keeping its data; whether any was running. Waits until every
    node process is gone."""
    project = projects.project_dir(project_dir)
    cdir = _state(project, create=False)
    if not cdir.is_dir():
        return False
    with _locked(cdir):
        nodes = _load(project)
        if nodes is None:
            return False
        _forget(project, nodes)
        return _shutdown(nodes, timeout)
