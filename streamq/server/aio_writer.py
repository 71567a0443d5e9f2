"""The asyncio producer's batching writer, on ``redis.asyncio``: auto-pipelined writes
for ``adelay()`` (``AsyncLink.submit``), on one connection of its own.

``AsyncWriter.submit`` is how the asyncio producer writes. Calls made in the same turn
of the event loop, and while an earlier write is in flight, share one round trip on
one connection (the first of a turn's calls go out in chunks as they come, ``AHEAD``);
their replies are read back in order, each call taking one reply per packed command
it sent. An error reply fails only its own call. Each new writer connection loads the
scripts (SCRIPT LOAD, at the head of its first write) before any EVALSHA on it; a
NOSCRIPT reply (a server that lost them since) loads them again and resends only the
commands that got it.

Also here, as the writer reads them: ``LOADS`` (the scripts' SCRIPT LOAD commands)
and ``failure`` (the first error among replies), which ``aio.AsyncLink``'s pooled
exchanges use too. A writer belongs to one ``AsyncLink``, hence to one event loop.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from typing import Any

import hiredis
import redis
import redis.asyncio

from . import scripts
from .sentinel import failed_over
from .transport import pack

MAX_CALLS = 1000
"""Calls per write at most: bounds one write's size and the wait of the calls behind."""
AHEAD = 100
"""Calls written ahead of their turn's flush once this many wait: the server runs them
while the loop makes the turn's other calls (all are read in one round trip)."""

_Call = tuple[list[bytes], "asyncio.Future[Any]", Any]
"""One call: its packed commands, its future, and what the future gets on success
(``REPLIES``: the replies)."""
REPLIES: Any = object()

LOADS = [pack("SCRIPT", "LOAD", scripts.SOURCE[name]) for name in scripts.NAMES]
"""SCRIPT LOAD of every script, in ``scripts.NAMES`` order."""


class _Replies:
    """The writer's reply reader: one hiredis reader fed from the connection's stream
    (a ``gets()`` a reply, not an awaited ``read_response()``). Error replies come back
    as ``redis.ResponseError`` values, their code first (what ``translate`` reads)."""

    __slots__ = ("stream", "reader")

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.reader = hiredis.Reader(replyError=redis.ResponseError)

    async def take(self, n: int) -> list[Any]:
        out: list[Any] = []
        gets, append = self.reader.gets, out.append
        while len(out) < n:
            reply = gets()
            if reply is False:  # hiredis's "not enough data" (a reply is never False)
                data = await self.stream.read(1 << 16)
                if not data:
                    raise redis.ConnectionError("Connection closed by server.")
                self.reader.feed(data)
            else:
                append(reply)
        return out


def _noscript(reply: Any) -> bool:
    return isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSCRIPT")


def _odd(replies: list[Any]) -> list[int]:
    """The indexes of error replies and of EXEC replies (which may hold errors)."""
    return [i for i, r in enumerate(replies) if isinstance(r, Exception) or type(r) is list]


def failure(replies: list[Any]) -> Exception | None:
    """The first error among one call's replies (also one inside an EXEC's)."""
    for r in replies:
        if isinstance(r, Exception):
            return r
        if type(r) is list:
            for item in r:
                if isinstance(item, Exception):
                    return item
    return None


class AsyncWriter:
    """The batching writer of one ``AsyncLink`` (see the module docstring): its
    connections are made from ``pool``'s class and options, not taken from the pool;
    ``error`` turns an exception into the one a caller gets (streamq's)."""

    def __init__(self, pool: redis.asyncio.ConnectionPool, timeout_s: float,
                 error: Callable[[BaseException], BaseException]) -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._error = error
        self._writer: Any = None
        self._loaded_on: Any = None  # the writer connection that has the scripts
        self._replies: _Replies | None = None
        self._pending: list[_Call] = []
        self._ahead: list[_Call] = []  # written ahead of the flush, replies not yet read
        self._busy = False  # a write awaits its replies: calls now wait for the next one
        self._flusher: asyncio.Task[None] | None = None
        self.writes = 0
        """Round trips the batcher made for every ``submit`` so far."""

    def submit(self, commands: list[bytes], future: asyncio.Future[Any] | None = None,
               value: Any = REPLIES) -> asyncio.Future[Any]:
        """Queue one call's packed commands for the write of this turn; the future (a
        new one, or ``future``) gets its replies (or ``value``), or its first error
        reply (as a streamq error). Once ``AHEAD`` calls wait on a ready connection,
        they are written at once (see ``AHEAD``)."""
        if future is None:
            future = asyncio.get_running_loop().create_future()
        pending = self._pending
        pending.append((commands, future, value))
        if self._flusher is None:  # runs next turn: this turn's calls join its write
            self._flusher = future.get_loop().create_task(self._flush())
        elif len(pending) >= AHEAD and not self._busy:
            self._write_ahead()
        return future

    def _write_ahead(self) -> None:
        """Write the waiting calls now, before the flush (which reads their replies)
        started, on a connection that has the scripts."""
        conn = self._writer
        if conn is None or self._loaded_on is not conn or conn._writer is None or \
                len(self._ahead) + len(self._pending) > MAX_CALLS:
            return
        calls, self._pending = self._pending, []
        self._ahead += calls
        try:
            conn._writer.write(b"".join([c for commands, _, _ in calls for c in commands]))
        except Exception:  # the flush sends them all again, on a new connection
            self._loaded_on = None

    async def _flush(self) -> None:
        try:
            while self._pending or self._ahead:
                calls, ahead = self._ahead, len(self._ahead)
                self._ahead = []
                calls += self._pending[:MAX_CALLS - ahead]
                del self._pending[:MAX_CALLS - ahead]
                self._busy = True
                try:
                    await self._write(calls, ahead)
                finally:
                    self._busy = False
        finally:
            self._flusher = None
            for _, future, _ in (*self._ahead, *self._pending):  # only when cancelled
                if not future.done():  # (the loop is closing): nothing more is sent
                    future.cancel()
            self._ahead, self._pending = [], []

    async def _write(self, calls: list[_Call], ahead: int) -> None:
        """One round trip for ``calls``, whose first ``ahead`` are already written on
        the writer connection; once more, all of them, on a new connection when that
        one failed or stopped being the primary."""
        for attempt in (1, 2):
            if self._writer is None:
                pool = self._pool
                self._writer = pool.connection_class(**pool.connection_kwargs)
            conn = self._writer
            try:
                async with asyncio.timeout(self._timeout_s):
                    replies, failures = await self._exchange(conn, calls, ahead)
                if attempt == 1 and any(failed_over(f) for f in failures.values()):
                    # A demoted primary refused the writes: again, to the new one.
                    raise redis.ConnectionError("the server is no longer the primary")
                break
            except BaseException as exc:  # replies may be left unread: a new connection
                await conn.disconnect(nowait=True)
                self._writer = self._loaded_on = None
                ahead = 0  # they went out on the old connection: all are sent again
                if attempt == 1 and isinstance(exc, redis.ConnectionError):
                    # Once more, as redis-py's retry does (an idle connection the server
                    # dropped; a write whose reply was lost after it ran runs twice).
                    continue
                for _, future, _ in calls:
                    if not future.done():
                        if isinstance(exc, Exception):
                            future.set_exception(self._error(exc))
                        else:
                            future.cancel()
                if not isinstance(exc, Exception):
                    raise
                return
        at = 0
        for k, (commands, future, value) in enumerate(calls):
            got, at = replies[at:at + len(commands)], at + len(commands)
            if not future.done():  # (done: the caller was cancelled)
                failed = failures.get(k) if failures else None
                if failed is None:
                    future.set_result(got if value is REPLIES else value)
                else:
                    future.set_exception(self._error(failed))

    async def _exchange(self, conn: Any, calls: list[_Call], ahead: int
                        ) -> tuple[list[Any], dict[int, Exception]]:
        """One write of ``calls`` but the ``ahead`` first (scripts first on a new
        connection), one more for any NOSCRIPT: the replies, each call's first error."""
        load = self._loaded_on is not conn
        if load and ahead:
            raise redis.ConnectionError("a write ahead of the flush failed")
        head = LOADS if load else []
        flat = [command for c, _, _ in calls for command in c]
        skip = sum(len(c) for c, _, _ in calls[:ahead]) if ahead else 0
        await conn.send_packed_command([b"".join([*head, *flat[skip:]])], check_health=False)
        self.writes += 1
        if self._replies is None or self._replies.stream is not conn._reader:
            self._replies = _Replies(conn._reader)  # a new connection: nothing buffered
        replies = await self._replies.take(len(head) + len(flat))
        loaded = failure(replies[:len(head)])
        if loaded is not None:
            raise loaded
        self._loaded_on = conn
        del replies[:len(head)]
        missing = [i for i in _odd(replies) if _noscript(replies[i])]
        if missing:  # the server lost its scripts since: load them, resend those only
            await conn.send_packed_command(
                [b"".join([*LOADS, *(flat[i] for i in missing)])], check_health=False)
            self.writes += 1
            again = await self._replies.take(len(LOADS) + len(missing))
            loaded = failure(again[:len(LOADS)])
            if loaded is not None:
                raise loaded
            for i, r in zip(missing, again[len(LOADS):], strict=True):
                replies[i] = r
        failures: dict[int, Exception] = {}
        odd = _odd(replies)
        if odd:  # which call each belongs to: the first error of each call counts
            ends = list(accumulate(len(c) for c, _, _ in calls))
            for i in odd:
                failed = failure([replies[i]])
                if failed is not None:
                    failures.setdefault(bisect_right(ends, i), failed)
        return replies, failures

    async def aclose(self) -> None:
        """Stop the flush (its calls are cancelled) and close the writer connection."""
        if self._flusher is not None:
            self._flusher.cancel()
        if self._writer is not None:
            await self._writer.disconnect()
            self._writer = self._loaded_on = None
