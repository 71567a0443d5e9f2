"""The asyncio side of the server link, on ``redis.asyncio``: auto-pipelined writes
for ``adelay()`` and pooled connections for marks, blocking reads and record reads.

``AsyncLink.send`` is how the asyncio producer writes. Calls made in the same turn of
the event loop, and while an earlier write is in flight, are joined into one write
on one connection; their replies are read back in order, each call taking one reply
per packed command it sent. An error reply fails only its own call, and the others
are still read. Each new writer connection loads the scripts (SCRIPT LOAD, at the
head of its first write) before any EVALSHA on it; a NOSCRIPT reply (a server that
lost them since) loads them again and resends only the commands that got it.

Blocking reads (BLMOVE of ``aget()``) never share the writer's connection: each
exchange takes a connection of its own from a pool, so a wait never delays a write.

A link belongs to one event loop (redis.asyncio connections cannot move between
loops): ``AsyncLinks`` keeps one per running loop. Errors are streamq's
(``connection.translate``), with the password masked.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
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
    """The writer's reply reader: one hiredis reader fed straight from the
    connection's stream, so a batch's thousands of replies cost one ``gets()`` each
    instead of an awaited ``read_response()`` each (a third of the time of a
    gathered ``adelay()``). Error replies come back as ``redis.ResponseError``
    values, their code first in the text (what ``translate`` reads)."""

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
        self._pending: list[tuple[list[bytes], asyncio.Future[list[Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.writes = 0
        """Writes the batcher made: the round trips of every ``send`` so far."""

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    def _error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, TimeoutError):
            exc = redis.TimeoutError(f"no reply within {self.settings.socket_timeout_s:g}s")
        return translate(exc, self.url) or exc

    # -- auto-pipelined writes -------------------------------------------------------
    async def send(self, commands: list[bytes]) -> list[Any]:
        """Send one call's packed commands with every other call of this turn; return
        its replies. Raises the call's first error reply (as a streamq error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((commands, future))
        if self._flusher is None:
            # Runs on the next turn: every call made in this one joins the write.
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                calls = self._pending[:MAX_CALLS]
                del self._pending[:MAX_CALLS]
                await self._write(calls)
        finally:
            self._flusher = None
            for _, future in self._pending:  # only when cancelled (the loop is closing)
                if not future.done():
                    future.cancel()

    async def _write(self, calls: list[tuple[list[bytes], asyncio.Future[list[Any]]]]) -> None:
        commands = [c for c, _ in calls]
        for attempt in (1, 2):
            if self._writer is None:
                pool = self._client.connection_pool
                self._writer = pool.connection_class(**pool.connection_kwargs)
            conn = self._writer
            try:
                async with asyncio.timeout(self.settings.socket_timeout_s):
                    replies = await self._exchange(conn, commands)
                failures = [_failure(got) for got in replies]
                if attempt == 1 and any(failed_over(f) for f in failures if f is not None):
                    # A demoted primary (a failover) refused the writes: again on a
                    # connection to the new one.
                    raise redis.ConnectionError("the server is no longer the primary")
                break
            except BaseException as exc:
                # Replies may be left unread on it: a new connection (and scripts) next.
                await conn.disconnect(nowait=True)
                self._writer = self._loaded_on = None
                if attempt == 1 and isinstance(exc, redis.ConnectionError):
                    # Once more on a new connection, as the blocking path (redis-py's
                    # retry) does: an idle connection the server dropped is the usual
                    # case; a write whose reply was lost after it ran runs twice.
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
        for (_, future), got, failed in zip(calls, replies, failures, strict=True):
            if future.done():  # the caller was cancelled
                continue
            if failed is None:
                future.set_result(got)
            else:
                future.set_exception(self._error(failed))

    async def _exchange(self, conn: Any, calls: list[list[bytes]]) -> list[list[Any]]:
        """One write of ``calls`` on ``conn`` (scripts first on a new connection),
        its replies per call, and one more write for any NOSCRIPT."""
        load = self._loaded_on is not conn
        head = _LOADS if load else []
        flat = [command for c in calls for command in c]
        await conn.send_packed_command([b"".join([*head, *flat])], check_health=False)
        self.writes += 1
        if self._replies is None or self._replies.stream is not conn._reader:
            self._replies = _Replies(conn._reader)  # a new connection: nothing buffered
        replies = await self._replies.take(len(head) + len(flat))
        loaded = _failure(replies[:len(head)])
        if loaded is not None:
            raise loaded
        self._loaded_on = conn
        del replies[:len(head)]
        missing = [i for i, r in enumerate(replies) if _noscript(r)]
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
        out, at = [], 0
        for c in calls:
            out.append(replies[at:at + len(c)])
            at += len(c)
        return out

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
