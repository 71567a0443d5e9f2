"""What only this user may reach: private directories and files, unix sockets of
one's own, and a one-command client that talks to such a socket without redis-py.

Used by the embedded server (``embedded.py``) and by the list of running embedded
servers (``projects.py``). A socket, or a directory it is in, that another user could
have put there is refused: their server would receive our tasks' arguments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import stat
import sys
from pathlib import Path
from urllib.parse import quote

from ..base.errors import EmbeddedServerError

log = logging.getLogger(__name__)


def refused(path: Path, problem: str,
            risk: str = "another user could be listening there") -> EmbeddedServerError:
    return EmbeddedServerError(
        f"refusing {path}: it {problem}, so {risk}; "
        "remove it, or set STREAMQ_URL to use another server"
    )


def private_dir(path: Path, *, create: bool) -> bool:
    """Whether ``path`` exists as a directory that only this user can reach; else raise.

    With ``create``, make it 0700 if missing. Only the directories streamq names come
    here, so one of ours with a wider mode (``.streamq/`` made under a permissive
    umask, or by an older streamq) is tightened to 0700, once, and said so. If others
    could write to it, it is tightened first and then refused if it holds anything of
    theirs: closing it first means nothing can be added while we look.
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
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
        if mode & 0o022:
            foreign = _foreign_entry(path)
            if foreign is not None:
                raise refused(foreign[0], f"belongs to uid {foreign[1]} and was put in "
                              f"{path} while it was writable by other users",
                              "another user may read or change the server's state")
        say(f"streamq: {path} was mode {mode:o}, open to other users; made it 0700")
    return True


def _foreign_entry(top: Path) -> tuple[Path, int] | None:
    """The first file or directory under ``top`` (not following symlinks) that is not
    this user's, with its owner."""
    for root, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            owner = os.lstat(os.path.join(root, name)).st_uid
            if owner != os.getuid():
                return Path(root, name), owner
    return None


def say(line: str) -> None:
    """Where a process says what it did to the embedded server: a log line once logging
    is set up (a worker's, in its format), else stderr; never stdout, which may be
    ``--json``."""
    if logging.getLogger().handlers:
        log.info("%s", line.removeprefix("streamq: "))
    else:
        print(line, file=sys.stderr, flush=True)


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
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:  # ELOOP: a symlink, which could point anywhere
        raise refused(path, f"cannot be opened as a file of yours ({exc.strerror})",
                      "it may lead to another user's file") from None
    owner = os.fstat(fd).st_uid
    if owner != os.getuid():
        os.close(fd)
        raise refused(path, f"belongs to uid {owner}, not to you",
                      "another user may read what streamq writes there")
    os.fchmod(fd, 0o600)
    return fd


def write_private(path: Path, text: str) -> None:
    with open(open_private(path), "w") as out:
        out.write(text)


def unix_only(sock: Path) -> str:
    """What to tell a person about who can reach a server on ``sock`` and nothing else."""
    try:
        user = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
    except KeyError:  # a uid with no passwd entry (a container)
        user = f"uid {os.getuid()}"
    return (f"it listens on the unix socket {sock} only, no TCP port; the socket is 0600 "
            f"in a 0700 directory, so only {user} can connect")


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
