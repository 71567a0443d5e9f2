"""Which project an embedded server belongs to, and the list of running ones.

**Discovery.** With no server URL configured (no ``url=``, ``--url`` or
``STREAMQ_URL``), streamq uses the embedded server of the *project directory*, found
the way tools find their config file: starting from the working directory and going
up one parent at a time, the first directory that contains a ``.streamq/`` directory,
a ``pyproject.toml`` or a ``.git`` is the project directory (the nearest one wins,
whichever of the three it holds). If no directory up to the filesystem root has any
of them, the working directory itself is the project directory. So a producer, a cron
job or a shell in any subdirectory of a project reaches the same server as a worker
started at its root.

**The list of running servers.** Each embedded server, when it starts, is recorded
in ``servers/`` under the user's cache directory (``$XDG_CACHE_HOME/streamq``, else
``~/.cache/streamq``) as one small JSON file; ``streamq server --list`` reads them,
and removes those whose server has gone. Stopping a server removes its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import ConfigurationError, EmbeddedServerError
from ..base.settings import user_cache_dir
from . import private

STATE_DIR = ".streamq"
"""The directory of an embedded server's state, in its project directory."""
PROJECT_MARKERS = ("pyproject.toml", ".git")
"""Files (or directories) that mark a project's root when no ``.streamq/`` is nearer."""

PathArg = str | os.PathLike[str] | None


def find_project(start: PathArg = None) -> Path:
    """The project directory for ``start`` (default: the working directory).

    Going up from ``start``: the first directory holding ``.streamq/``,
    ``pyproject.toml`` or ``.git``; if none does, ``start`` itself.
    """
    here = Path(os.getcwd() if start is None else start).resolve()
    if not here.is_dir():
        raise ConfigurationError(f"project directory {here} does not exist")
    for candidate in (here, *here.parents):
        if os.path.isdir(candidate / STATE_DIR) or any(
                os.path.lexists(candidate / marker) for marker in PROJECT_MARKERS):
            return candidate
    return here


def project_dir(path: PathArg) -> Path:
    """``path`` resolved (it must be a directory), or the discovered project if None."""
    if path is None:
        return find_project()
    project = Path(path).resolve()
    if not project.is_dir():
        raise ConfigurationError(f"project directory {project} does not exist")
    return project


# -- the list of running servers ---------------------------------------------------------

@dataclass(frozen=True)
class RunningServer:
    """One embedded server of this user that answers on its socket."""

    project: Path
    url: str
    pid: int
    started: float
    """Unix time it was recorded at (its start)."""
    uptime_s: int | None
    """Its own ``uptime_in_seconds``, or None if it did not answer in time."""


_NO_CACHE = (OSError, RuntimeError, KeyError)
"""No cache dir to be had (a read-only or missing home): the list is best effort."""


def _servers_dir() -> Path:
    return user_cache_dir() / "servers"


def _entry(project: Path, pid: int) -> Path:
    digest = hashlib.sha1(os.fsencode(project)).hexdigest()[:16]
    return _servers_dir() / f"{digest}-{pid}.json"


def record_server(project: Path, sock: Path, pid: int, url: str | None = None) -> None:
    """Add a just-started server to the list (best effort: a read-only home only means
    that ``streamq server --list`` cannot show it). ``url``: what clients use, when not
    ``sock`` (a local cluster: its ``redis+cluster://`` URL; ``sock`` is a node's)."""
    doc = {"project": str(project), "socket": str(sock), "url": url or private.url_of(sock),
           "pid": pid, "started": time.time()}
    with contextlib.suppress(*_NO_CACHE, EmbeddedServerError):
        path = _entry(project, pid)
        # Missing ancestors (~/.cache) 0700 too: mkdir(parents=True) would follow the umask.
        for ancestor in reversed(path.parent.parents):
            if not os.path.isdir(ancestor):
                os.mkdir(ancestor, 0o700)
        private.private_dir(path.parent.parent, create=True)
        private.private_dir(path.parent, create=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        private.write_private(tmp, json.dumps(doc) + "\n")
        os.replace(tmp, path)


def forget_server(project: Path, pid: int) -> None:
    """Remove a stopped server from the list."""
    with contextlib.suppress(*_NO_CACHE):
        _entry(project, pid).unlink()


def _alive(sock: Path, pid: int) -> tuple[bool, int | None]:
    """Whether the recorded server still runs, and its uptime if it said."""
    try:
        if not private.usable(sock):
            return False, None
    except EmbeddedServerError:  # the path is no longer ours: not our server any more
        return False, None
    reply = private.call(sock, "INFO", "server")
    if reply is None:  # nothing listens there
        return False, None
    fields = dict(line.strip().partition(":")[::2]
                  for line in reply.decode(errors="replace").splitlines() if ":" in line)
    if "process_id" not in fields:  # busy or slow to answer: judge by its pid
        return private.pid_alive(pid), None
    uptime = fields.get("uptime_in_seconds", "")
    return fields["process_id"] == str(pid), int(uptime) if uptime.isdigit() else None


def running_servers() -> list[RunningServer]:
    """Every embedded server of this user on this machine that still runs, by project
    directory; the entries of servers that have gone are removed."""
    found: list[RunningServer] = []
    try:
        paths = sorted(_servers_dir().glob("*.json"))
    except _NO_CACHE:
        return found
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            project, sock, pid = Path(doc["project"]), Path(doc["socket"]), int(doc["pid"])
            started = float(doc.get("started", 0.0))
            url = str(doc.get("url") or private.url_of(sock))
        except (OSError, ValueError, KeyError, TypeError):
            doc = None
        alive, uptime = _alive(sock, pid) if doc is not None else (False, None)
        if not alive:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        found.append(RunningServer(project, url, pid, started, uptime))
    return sorted(found, key=lambda s: (str(s.project), s.pid))
