"""What only this user may reach: private directories and files, unix sockets of
one's own, and a one-command client that talks to such a socket without redis-py.

Used by the embedded server (``embedded.py``) and by the list of running embedded
servers (``projects.py``). A socket, or a directory it is in, that another user could
have put there is refused: their server would receive our tasks' arguments.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path
from urllib.parse import quote

from ..base.errors import EmbeddedServerError


def refused(path: Path, problem: str) -> EmbeddedServerError:
    return EmbeddedServerError(
        f"refusing {path}: it {problem}, so another user could be listening there; "
        "remove it, or set STREAMQ_URL to use another server"
    )


def private_dir(path: Path, *, create: bool) -> bool:
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
        raise refused(path, "is a symlink or not a directory")
    if st.st_uid != os.getuid():
        raise refused(path, f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    if st.st_mode & 0o022:
        raise refused(path, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
    if create and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return True


def usable(sock: Path) -> bool:
    """Whether ``sock`` exists and is this user's to connect to; raise if it may be another's."""
    try:
        parent = os.lstat(sock.parent)
    except FileNotFoundError:
        return False
    # In a sticky dir of root's or ours (an older streamq's /tmp socket) nobody else can
    # replace a file of ours, so its owner is all that counts; elsewhere the dir's too.
    if not (parent.st_mode & stat.S_ISVTX and parent.st_uid in (0, os.getuid())):
        private_dir(sock.parent, create=False)
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        raise refused(sock, f"is not a socket of yours (owner uid {st.st_uid})")
    return True


def open_private(path: Path, *, append: bool = False) -> int:
    """Open ``path`` for writing, 0600 even if it existed with looser permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_private(path: Path, text: str) -> None:
    with open(open_private(path), "w") as out:
        out.write(text)


def url_of(sock: Path) -> str:
    return "unix://" + quote(str(sock))


def call(sock: Path, *args: str, timeout: float = 2.0) -> bytes | None:
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


def info(sock: Path, section: str = "server") -> dict[str, str]:
    """The server's ``INFO section`` over ``sock`` as a dict (empty if nothing answers)."""
    text = (call(sock, "INFO", section) or b"").decode(errors="replace")
    return dict(line.strip().partition(":")[::2] for line in text.splitlines() if ":" in line)


def answers(sock: Path) -> bool:
    """Whether a server of this user answers PING on ``sock`` (raises if it may be another's)."""
    return usable(sock) and (call(sock, "PING") or b"").startswith(b"+PONG")


def pid_alive(pid: int) -> bool:
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
