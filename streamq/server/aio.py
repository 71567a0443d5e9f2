"""The asyncio side of the server link, on ``redis.asyncio``: auto-pipelined writes
for ``adelay()`` and pooled connections for marks, blocking reads and record reads.

``AsyncLink.submit`` is how the asyncio producer writes. Calls made in the same turn
of the event loop, and while an earlier write is in flight, share one round trip on
one connection (the first of a turn's calls go out in chunks as they come, ``AHEAD``);
their replies are read back in order, each call taking one reply per packed command
it sent. An error reply fails only its own call. Each new writer connection loads the
scripts (SCRIPT LOAD, at the head of its first write) before any EVALSHA on it; a
NOSCRIPT reply (a server that lost them since) loads them again and resends only the
commands that got it.

Blocking reads (BLMOVE of ``aget()``) never share the writer's connection: each
exchange takes a connection of its own from a pool, so a wait never delays a write.

A link belongs to one event loop (redis.asyncio connections cannot move between
loops): ``AsyncLinks`` keeps one per running loop. Errors are streamq's
(``connection.translate``), with the password masked.
"""

from __future__ import annotations

import asyncio
import weakref
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from typing import Any, cast

import hiredis
import redis
import redis.asyncio

from ..base import keys
from ..base.errors import BrokerConnectionError, BrokerError, ConfigurationError
from ..base.ids import queue_of
from ..base.sentinelurl import is_sentinel
from ..base.settings import Settings, mask_url, scrub, validate_url
from ..data import record
from . import scripts, sentinel_aio
from .broker import as_str
from .connection import check_tls_files, translate
from .records import GONE, GONE_TTL_MS
from .sentinel import failed_over
from .transport import pack

MAX_CALLS = 1000
"""Calls per write at most: bounds one write's size and the wait of the calls behind."""
AHEAD = 100
"""Calls written ahead of their turn's flush once this many wait: the server runs them
while the loop makes the turn's other calls (all are read in one round trip)."""

_Call = tuple[list[bytes], "asyncio.Future[list[Any]]"]

_LOADS = [pack("SCRIPT", "LOAD", scripts.SOURCE[name]) for name in scripts.NAMES]


def _client(url: str, settings: Settings, *, blocking: bool) -> redis.asyncio.Redis:
    timeout = settings.socket_timeout_s + (settings.block_ms / 1000.0 if blocking else 0.0)
    validate_url(url)
    try:
        options: dict[str, Any] = dict(socket_timeout=timeout, health_check_interval=30,
                                       socket_connect_timeout=settings.connect_timeout_s)
        client = sentinel_aio.async_client(url, **options) if is_sentinel(url) else \
            redis.asyncio.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid server URL {mask_url(url)!r}: {scrub(str(exc), url)} (percent-encode "
            f"'/', '#', '?' and '@' in a password, e.g. '/' as %2F)") from None
    check_tls_files(url, client.connection_pool.connection_kwargs)
    return client


async def _read(conn: Any) -> Any:
    """One reply; an error reply is returned as a value, not raised."""
    try:
        # No per-reply timer (it costs more than the read): the caller times the whole.
        return await conn.read_response(timeout=float("inf"))
    except redis.ResponseError as exc:
        return exc


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


def _failure(replies: list[Any]) -> Exception | None:
    """The first error among one call's replies (also one inside an EXEC's)."""
    for r in replies:
        if isinstance(r, Exception):
            return r
        if type(r) is list:
            for item in r:
                if isinstance(item, Exception):
                    return item
    return None


class AsyncLink:
    """One event loop's link to the server (see the module docstring)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.ns = settings.namespace
        self.done_ttl_s = min(settings.result_ttl, record.DONE_TTL_S)
        self._client = _client(url, settings, blocking=False)
        self._blocking = _client(url, settings, blocking=True)
        self._writer: Any = None
        self._loaded_on: Any = None  # the writer connection that has the scripts
        self._replies: _Replies | None = None
        self._scripts_loaded = False  # on the server, for the pooled exchanges
        self._pending: list[_Call] = []
        self._ahead: list[_Call] = []  # written ahead of the flush, replies not yet read
        self._busy = False  # a write awaits its replies: calls now wait for the next one
        self.templates: dict[Any, Any] = {}
        """The producer's per-task packing templates (``streamq.api.aio``)."""
        self._flusher: asyncio.Task[None] | None = None
        self.writes = 0
        """Round trips the batcher made for every ``submit`` so far."""

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def _error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, TimeoutError):
            exc = redis.TimeoutError(f"no reply within {self.settings.socket_timeout_s:g}s")
        return translate(exc, self.url) or exc

    # -- auto-pipelined writes -------------------------------------------------------
    def submit(self, commands: list[bytes]) -> asyncio.Future[list[Any]]:
        """Queue one call's packed commands for the write of this turn; the future gets
        its replies, or its first error reply (as a streamq error). Once ``AHEAD``
        calls wait on a ready connection, they are written at once (see ``AHEAD``)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending
        pending.append((commands, future))
        if self._flusher is None:  # runs next turn: this turn's calls join its write
            self._flusher = loop.create_task(self._flush())
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
            conn._writer.write(b"".join([c for commands, _ in calls for c in commands]))
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
            for _, future in (*self._ahead, *self._pending):  # only when cancelled
                if not future.done():  # (the loop is closing): nothing more is sent
                    future.cancel()
            self._ahead, self._pending = [], []

    async def _write(self, calls: list[_Call], ahead: int) -> None:
        """One round trip for ``calls``, whose first ``ahead`` are already written on
        the writer connection; once more, all of them, on a new connection when that
        one failed or stopped being the primary."""
        for attempt in (1, 2):
            if self._writer is None:
                pool = self._client.connection_pool
                self._writer = pool.connection_class(**pool.connection_kwargs)
            conn = self._writer
            try:
                async with asyncio.timeout(self.settings.socket_timeout_s):
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
                for _, future in calls:
                    if not future.done():
                        if isinstance(exc, Exception):
                            future.set_exception(self._error(exc))
                        else:
                            future.cancel()
                if not isinstance(exc, Exception):
                    raise
                return
        at = 0
        for k, (commands, future) in enumerate(calls):
            got, at = replies[at:at + len(commands)], at + len(commands)
            if not future.done():  # (done: the caller was cancelled)
                failed = failures.get(k) if failures else None
                if failed is None:
                    future.set_result(got)
                else:
                    future.set_exception(self._error(failed))

    async def _exchange(self, conn: Any, calls: list[_Call], ahead: int
                        ) -> tuple[list[Any], dict[int, Exception]]:
        """One write of ``calls`` but the ``ahead`` first (scripts first on a new
        connection), one more for any NOSCRIPT: the replies, each call's first error."""
        load = self._loaded_on is not conn
        if load and ahead:
            raise redis.ConnectionError("a write ahead of the flush failed")
        head = _LOADS if load else []
        flat = [command for c, _ in calls for command in c]
        skip = sum(len(c) for c, _ in calls[:ahead]) if ahead else 0
        await conn.send_packed_command([b"".join([*head, *flat[skip:]])], check_health=False)
        self.writes += 1
        if self._replies is None or self._replies.stream is not conn._reader:
            self._replies = _Replies(conn._reader)  # a new connection: nothing buffered
        replies = await self._replies.take(len(head) + len(flat))
        loaded = _failure(replies[:len(head)])
        if loaded is not None:
            raise loaded
        self._loaded_on = conn
        del replies[:len(head)]
        missing = [i for i in _odd(replies) if _noscript(replies[i])]
        if missing:  # the server lost its scripts since: load them, resend those only
            await conn.send_packed_command(
                [b"".join([*_LOADS, *(flat[i] for i in missing)])], check_health=False)
            self.writes += 1
            again = await self._replies.take(len(_LOADS) + len(missing))
            loaded = _failure(again[:len(_LOADS)])
            if loaded is not None:
                raise loaded
            for i, r in zip(missing, again[len(_LOADS):], strict=True):
                replies[i] = r
        failures: dict[int, Exception] = {}
        odd = _odd(replies)
        if odd:  # which call each belongs to: the first error of each call counts
            ends = list(accumulate(len(c) for c, _ in calls))
            for i in odd:
                failed = _failure([replies[i]])
                if failed is not None:
                    failures.setdefault(bisect_right(ends, i), failed)
        return replies, failures

    # -- pooled exchanges --------------------------------------------------------------
    async def run(self, commands: list[bytes], *, blocking: bool = False) -> list[Any]:
        """Send ``commands`` in one write on a pooled connection of their own and
        return the replies (error replies as values)."""
        client = self._blocking if blocking else self._client
        pool = client.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise self._error(exc) from exc
        try:
            await conn.send_packed_command([b"".join(commands)], check_health=False)
            return [await _read(conn) for _ in commands]
        except BaseException as exc:
            await conn.disconnect(nowait=True)  # replies may be left unread on it
            if isinstance(exc, Exception):
                raise self._error(exc) from exc
            raise
        finally:
            await pool.release(conn)

    async def run_checked(self, commands: list[bytes], *, blocking: bool = False
                          ) -> list[Any]:
        """``run``, raising the first error reply."""
        replies = await self.run(commands, blocking=blocking)
        failed = _failure(replies)
        if failed is not None:
            raise self._error(failed)
        return replies

    async def ensure_scripts(self) -> None:
        """Load the scripts on the server once, for an exchange that cannot afford a
        NOSCRIPT: a mark followed by a blocking read in the same round trip."""
        if not self._scripts_loaded:
            await self.run_checked(_LOADS)
            self._scripts_loaded = True

    async def value_limit(self) -> int | None:
        """The server's ``proto-max-bulk-len``; None when CONFIG is refused."""
        try:
            (reply,) = await self.run_checked([pack("CONFIG", "GET", "proto-max-bulk-len")])
        except BrokerConnectionError:
            raise
        except BrokerError:  # CONFIG disabled or renamed (managed servers)
            return None
        if isinstance(reply, dict):
            reply = [x for pair in reply.items() for x in pair]
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    # -- task records (as ``records.RecordStore``, awaited) -------------------------
    async def queue_of(self, task_id: str) -> str | None:
        queue = queue_of(task_id)
        if queue is not None:
            return queue
        (found,) = await self.run_checked([pack("GET", keys.task_queue(self.ns, task_id))])
        return as_str(found) if found is not None else None

    async def read(self, queue: str, task_id: str) -> dict[str, Any]:
        """The decoded record; empty for an unknown id."""
        (raw,) = await self.run_checked([pack("HGETALL", keys.record(self.ns, queue, task_id))])
        if isinstance(raw, list):  # RESP2: a flat list of fields and values
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        return record.decode(cast("dict[bytes, bytes]", raw)) if raw else {}

    async def status(self, queue: str, task_id: str) -> str | None:
        (value,) = await self.run_checked(
            [pack("HGET", keys.record(self.ns, queue, task_id), record.STATUS)])
        return as_str(value) if value else None

    async def mark(self, queue: str, task_id: str) -> str | None:
        """wait.lua: the status (None for an unknown id), marking the record."""
        command = self._wait_script(queue, task_id, [self.done_ttl_s])
        (status,) = await self.run([command])
        if isinstance(status, redis.exceptions.NoScriptError):
            self._scripts_loaded = False
            await self.ensure_scripts()
            (status,) = await self.run([command])
        failed = _failure([status])
        if failed is not None:
            raise self._error(failed)
        return as_str(status) if status else None

    async def mark_and_wait(self, queue: str, task_id: str, seconds: float
                            ) -> tuple[str | None, bytes | None]:
        """``mark`` and ``wait_done`` in one round trip, on a blocking connection."""
        await self.ensure_scripts()
        done = keys.done(self.ns, queue, task_id)
        status, payload = await self.run_checked([
            self._wait_script(queue, task_id, [self.done_ttl_s, GONE, GONE_TTL_MS]),
            pack("BLMOVE", done, done, "RIGHT", "LEFT", seconds)], blocking=True)
        return (as_str(status) if status else None), payload

    async def wait_done(self, queue: str, task_id: str, seconds: float) -> bytes | None:
        done = keys.done(self.ns, queue, task_id)
        # Onto the same list: the completion stays there for every other waiter.
        (moved,) = await self.run_checked(
            [pack("BLMOVE", done, done, "RIGHT", "LEFT", max(seconds, 0.01))], blocking=True)
        return cast("bytes | None", moved)

    def _wait_script(self, queue: str, task_id: str, args: list[Any]) -> bytes:
        names = [keys.record(self.ns, queue, task_id), keys.done(self.ns, queue, task_id)]
        return pack("EVALSHA", scripts.SHA["wait"], 2, *names, *args)

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._writer is not None:
            await self._writer.disconnect()
            self._writer = self._loaded_on = None
        await self._client.aclose()
        await self._blocking.aclose()


class AsyncLinks:
    """One ``AsyncLink`` per running event loop, made on first use in it."""

    def __init__(self, settings: Settings, url: Callable[[], str]) -> None:
        self._settings = settings
        self._url = url
        self._links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncLink] = \
            weakref.WeakKeyDictionary()

    def current(self) -> AsyncLink:
        """The running loop's link (a ``RuntimeError`` outside a running loop)."""
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            link = self._links[loop] = AsyncLink(self._url(), self._settings)
        return link

    async def aclose(self) -> None:
        """Close the running loop's link (the next use opens a new one)."""
        link = self._links.pop(asyncio.get_running_loop(), None)
        if link is not None:
            await link.aclose()
