"""Sending commands: packed batches for the hot path, and scripts by SHA.

``Packed`` holds commands packed by hiredis as they are queued (redis-py's pipeline
encodes every argument in Python, which cost the worker more than the server's
work); ``Transport.run`` sends them in one write and reads the replies.
``Transport.send`` streams many batches on one connection, stops at the first error
and can say which batches were written for sure (``answered``). A durable write ends
with a wait command (WAITAOF or WAIT) in the same write, on the same connection:
both wait for this connection's own writes, so anywhere else they would vouch for
nothing; its reply is handed back, not raised. A server that lost its
scripts answers NOSCRIPT (nothing ran): the scripts are loaded and only those
commands are sent again. Errors are streamq errors (``connection.translated``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis
from hiredis import pack_command as _pack

from ..base.errors import BrokerError
from . import cluster, scripts
from .connection import Connection, translate, translated
from .sentinel import failed_over

EXEC = _pack(("EXEC",))
MULTI = _pack(("MULTI",))


def pack(*args: Any) -> bytes:
    return _pack(args)  # type: ignore[no-any-return]  # hiredis's stub has no return type


class Packed:
    """Commands packed for one write (see the module docstring)."""

    __slots__ = ("commands", "optional", "replies", "forwards")

    def __init__(self, commands: list[bytes] | None = None) -> None:
        self.commands: list[bytes] = commands if commands is not None else []
        self.optional: set[int] = set()
        """Indexes of best-effort commands (counters): their errors are not raised."""
        self.replies: list[Any] | None = None
        """Every reply, in order, once ``Transport.run`` sent it (errors as values)."""
        self.forwards: list[tuple[int, str, tuple[str, str]]] = []
        """(command index, queue, (outbox item, value)) of the canvas forwards packed
        here (``OutcomeWriter``)."""

    def __len__(self) -> int:
        return len(self.commands)

    def command(self, *args: Any) -> None:
        self.commands.append(_pack(args))

    def best_effort(self, *args: Any) -> None:
        """A command whose failure (a full server refusing a counter) is ignored."""
        self.optional.add(len(self.commands))
        self.commands.append(_pack(args))

    def script(self, name: str, keys: list[str], args: list[Any]) -> None:
        self.commands.append(_pack(("EVALSHA", scripts.SHA[name], len(keys), *keys, *args)))


def script_command(name: str, keys: list[str], args: list[Any]) -> bytes:
    return _pack(  # type: ignore[no-any-return]
        ("EVALSHA", scripts.SHA[name], len(keys), *keys, *args))


class Transport:
    """Packed exchanges and script calls over one ``Connection``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._scripts_loaded = False

    def load_scripts(self) -> None:
        client = self.connection.client
        with translated(self.connection.url):
            # A cluster's primaries have a script cache each.
            for server in cast(Any, client).primaries() if self.connection.is_cluster \
                    else [client]:
                scripts.load(server)
        self._scripts_loaded = True

    def ensure_scripts(self) -> None:
        """Load the scripts once, for a caller that cannot afford a NOSCRIPT: one whose
        script shares a round trip with a blocking read that depends on it."""
        if not self._scripts_loaded:
            self.load_scripts()

    def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script now (loading the scripts if the server lost them)."""
        client = self.connection.client
        try:
            return client.evalsha(scripts.SHA[name], len(keys), *keys, *args)
        except BrokerError as exc:
            if exc.code != "NOSCRIPT":
                raise
        self.load_scripts()
        return client.evalsha(scripts.SHA[name], len(keys), *keys, *args)

    def run(self, packed: Packed, *, blocking: bool = False) -> list[Any]:
        """Send ``packed`` in one write and return the replies in order; the first
        error reply (also one inside an EXEC's replies) is raised after every
        command has run."""
        url = self.connection.url
        router = self.connection.router(blocking)
        replies: list[Any]
        if router is not None:  # a cluster: it loads scripts a node lacks itself
            with translated(url):
                replies = router.run(packed.commands)[0]
            missing = []
        else:
            with translated(url), self.connection.own(blocking) as conn:
                replies = _with_retry(conn, lambda: _send_read(conn, packed.commands))
            missing = [i for i, r in enumerate(replies)
                       if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            self.load_scripts()
            again = Packed([packed.commands[i] for i in missing])
            again.optional = {n for n, i in enumerate(missing) if i in packed.optional}
            for i, r in zip(missing, self.run(again, blocking=blocking), strict=True):
                replies[i] = r
        packed.replies = replies
        for i, r in enumerate(replies):
            if isinstance(r, Exception):
                if i in packed.optional:
                    continue
                raise _error(r, url)
            if type(r) is list and r and r[0].__class__ is not list:  # an EXEC's replies
                for item in r:
                    if isinstance(item, Exception):
                        raise _error(item, url)
        return replies

    def run_durable(self, commands: list[bytes], wait: bytes) -> Any:
        """``run`` of a write followed by ``wait`` in the same write; returns the wait's
        reply (an exception value when the server refused it), after raising the first
        error of the write itself. A script the server had lost (NOSCRIPT: it did not
        run) is sent again with the wait behind it, so the wait covers it too."""
        url = self.connection.url
        router = self.connection.router()
        replies: list[Any]
        if router is not None:  # the wait follows each node's share, on its connection
            with translated(url):
                replies, waited = router.run(commands, wait)
            replies.append(waited)
        else:
            replies = self._durable_exchange(url, commands, wait)
        failed = _first_error(replies[:-1])
        if failed is not None:
            raise _error(failed, url)
        return replies[-1]

    def _durable_exchange(self, url: str, commands: list[bytes], wait: bytes) -> list[Any]:
        with translated(url), self.connection.own() as conn:
            replies: list[Any] = _with_retry(conn, lambda: _send_read(conn, [*commands, wait]))
            missing = [i for i, r in enumerate(replies[:-1])
                       if isinstance(r, redis.exceptions.NoScriptError)]
            if missing:
                self.load_scripts()
                again = [commands[i] for i in missing]
                more = _with_retry(conn, lambda: _send_read(conn, [*again, wait]))
                for i, r in zip(missing, more, strict=False):
                    replies[i] = r
                replies[-1] = more[-1]
        return replies

    def send(self, batches: Iterable[list[bytes]], answered: list[bool] | None = None,
             wait: bytes | None = None) -> Any:
        """Send batches of packed commands on one connection, in order.

        Batches are packed lazily and streamed: the next is packed and sent while
        the server runs the one before, with at most two unanswered. After the first
        error reply no further batch is packed or sent; that error is raised once every
        reply of what was sent has been read. A lost connection is retried as redis-py
        retries any command: what got no answer is sent again, so (as for any command)
        a batch whose reply was lost after the server ran it runs twice.

        ``answered`` (when given) receives one value per batch taken from ``batches``,
        also when this raises: True when every reply of that batch was a success (it
        was written for sure), False when one was an error or never came (it may or
        may not have been). Batches beyond those were not sent.

        ``wait`` (a durable write) follows the last batch on the same connection, and
        its reply is returned (None when an error stopped the stream first)."""
        url = self.connection.url
        router = self.connection.router()
        if router is not None:
            return _send_routed(router, url, batches, answered, wait)
        stream = _CommandStream(batches, wait)
        try:
            # One connection for both: a wait vouches only for its own connection.
            with translated(url), self.connection.own() as conn:
                stream.run(conn)
                if stream.noscript:  # their scripts only, in order, once loaded
                    self.load_scripts()
                    again = _CommandStream(stream.noscript.values(), wait)
                    stream.again = again
                    again.run(conn)
                    stream.error = stream.error or again.error
        finally:
            if answered is not None:
                answered += stream.outcomes()
        if stream.error is not None:
            raise _error(stream.error, url)
        # After a resend the last wait follows every write of the connection.
        return stream.again.waited if stream.again is not None else stream.waited


def _send_routed(router: cluster.Router, url: str, batches: Iterable[list[bytes]],
                 answered: list[bool] | None, wait: bytes | None) -> Any:
    """``Transport.send`` on a cluster: batches go out a few at a time, each round
    split over the nodes (with the wait behind every node's share, when asked)."""
    source = iter(batches)
    waited: list[Any] = []
    error: Exception | None = None
    while error is None:
        chunk = list(itertools.islice(source, _ROUTED_BATCHES))
        if not chunk:
            break
        sizes = [len(b) for b in chunk]
        try:
            with translated(url):
                replies, wait_reply = router.run([c for b in chunk for c in b], wait)
        except BaseException:
            if answered is not None:
                answered += [False] * len(chunk)
            raise
        waited.append(wait_reply)
        start = 0
        for size in sizes:
            failed = _first_error(replies[start:start + size])
            start += size
            error = error or failed
            if answered is not None:
                answered.append(failed is None)
    if error is not None:
        raise _error(error, url)
    return cluster.weakest(waited) if wait is not None else None


_ROUTED_BATCHES = 8


def _first_error(replies: list[Any]) -> Exception | None:
    for r in replies:
        if type(r) is list and r and r[0].__class__ is not list:  # an EXEC's replies
            r = next((item for item in r if isinstance(item, Exception)), r)
        if isinstance(r, Exception):
            return r
    return None


def _error(reply: Exception, url: str) -> Exception:
    return translate(reply, url) or reply


def _with_retry(conn: Any, exchange: Callable[[], Any]) -> Any:
    """``exchange()`` on ``conn``, retried after a lost connection as redis-py retries
    any command; on any other failure the connection is dropped, since replies may be
    left unread on it."""
    try:
        return conn.retry.call_with_retry(exchange, lambda _error: conn.disconnect())
    except BaseException:
        conn.disconnect()
        raise


def _send_read(conn: Any, commands: list[bytes]) -> list[Any]:
    conn.send_packed_command([b"".join(commands)], check_health=False)
    replies: list[Any] = []
    demoted = False
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
            demoted = demoted or failed_over(exc)
    if demoted:  # its server is a replica now: the next use finds the primary
        conn.disconnect()
    return replies


class _CommandStream:
    """The send/read loop of ``Transport.send``; resumable after a reconnect."""

    __slots__ = ("source", "unanswered", "error", "noscript", "answered", "again", "wait",
                 "waited")

    def __init__(self, batches: Iterable[list[bytes]], wait: bytes | None = None) -> None:
        self.source = iter(batches)
        self.wait = wait
        self.waited: Any = None
        """The reply of ``wait``, once read."""
        self.unanswered: deque[list[bytes]] = deque()
        self.error: Exception | None = None
        self.noscript: dict[int, list[bytes]] = {}
        """Per batch, its commands to send again once the scripts are loaded."""
        self.answered: list[bool] = []
        """Per batch read: True when every reply was a success."""
        self.again: _CommandStream | None = None
        """The stream that sent ``noscript`` again."""

    def outcomes(self) -> list[bool]:
        """Per batch taken from the source: written for sure (see ``Transport.send``)."""
        done = list(self.answered)
        if self.noscript:
            resent = self.again.outcomes() if self.again is not None else []
            for n, batch in enumerate(self.noscript):
                done[batch] = done[batch] and n < len(resent) and resent[n]
        return done + [False] * len(self.unanswered)

    def run(self, conn: Any) -> None:
        _with_retry(conn, lambda: self._run(conn))

    def _run(self, conn: Any) -> None:
        if self.unanswered:  # a reconnect: send again what got no answer
            conn.send_packed_command([b"".join(c) for c in self.unanswered],
                                     check_health=False)
        source = self.source
        while self.error is None:  # after an error reply, pack and send nothing more
            commands = next(source, None)
            if commands is None:
                break
            self.unanswered.append(commands)  # first: a failed send is sent again
            conn.send_packed_command([b"".join(commands)], check_health=False)
            if len(self.unanswered) > 1:
                self._read(conn)
        wait = self.wait if self.error is None else None
        if wait is not None:  # behind the last batch, before its replies are read
            conn.send_packed_command([wait], check_health=False)
        while self.unanswered:
            self._read(conn)
        if wait is not None:
            try:
                self.waited = conn.read_response()
            except redis.ResponseError as exc:
                self.waited = exc

    def _read(self, conn: Any) -> None:
        ok = True
        self.noscript.pop(len(self.answered), None)  # from a read cut by a reconnect
        for command in self.unanswered[0]:
            try:
                reply = conn.read_response()
            except redis.exceptions.NoScriptError:
                self.noscript.setdefault(len(self.answered), []).append(command)
            except redis.ResponseError as exc:
                self.error = self.error or exc
                ok = False
            else:
                if command is EXEC and reply:  # errors of a transaction's commands
                    failed = next((r for r in reply if isinstance(r, Exception)), None)
                    if failed is not None:
                        self.error = self.error or failed
                        ok = False
        self.unanswered.popleft()
        self.answered.append(ok)
