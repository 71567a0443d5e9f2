"""The asyncio side of the server link, on ``redis.asyncio``: one event loop's link
(``AsyncLink``) with its pooled connections for marks, blocking reads and record
reads, and ``AsyncLinks``, one link per running loop.

``AsyncLink.submit`` is how the asyncio producer writes; the batching writer behind
it (auto-pipelined writes on a connection of its own, script loading, NOSCRIPT
resends) is ``aio_writer.AsyncWriter``. This module owns the rest: the
``redis.asyncio`` clients made from the server URL (``_client``; a cluster URL is
refused there, before anything connects), the pooled exchanges and the task record
reads.

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

import redis
import redis.asyncio

from ..base import keys
from ..base.clusterurl import is_cluster
from ..base.errors import BrokerConnectionError, BrokerError, ConfigurationError
from ..base.ids import queue_of
from ..base.sentinelurl import is_sentinel
from ..base.settings import Settings, mask_url, scrub, validate_url
from ..data import record
from . import scripts, sentinel_aio
from .aio_writer import LOADS, REPLIES, AsyncWriter, failure
from .broker import as_str
from .connection import check_tls_files, translate
from .records import GONE, GONE_TTL_MS
from .transport import pack

NO_CLUSTER = (
    "the asyncio client (adelay, aapply_async, amap, aget, astatus) does not support "
    "Redis Cluster URLs (redis+cluster://) yet; nothing was sent. Call the blocking "
    "methods in a thread instead, e.g. await asyncio.to_thread(task.delay, ...) or "
    "await asyncio.to_thread(result.get, timeout=...)")
"""The error of any asyncio call on an app whose URL is a cluster URL."""


def _client(url: str, settings: Settings, *, blocking: bool) -> redis.asyncio.Redis:
    if is_cluster(url):  # redis.asyncio.Redis has no slot routing: refused, not tried
        raise ConfigurationError(NO_CLUSTER)
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


class AsyncLink:
    """One event loop's link to the server (see the module docstring)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.ns = settings.namespace
        self.done_ttl_s = min(settings.result_ttl, record.DONE_TTL_S)
        self._client = _client(url, settings, blocking=False)
        self._blocking = _client(url, settings, blocking=True)
        self._batcher = AsyncWriter(self._client.connection_pool, settings.socket_timeout_s,
                                    self._error)
        self._scripts_loaded = False  # on the server, for the pooled exchanges
        self.templates: dict[Any, Any] = {}
        """The producer's per-task packing templates (``streamq.api.aio``)."""

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def writes(self) -> int:
        """Round trips the batcher made for every ``submit`` so far."""
        return self._batcher.writes

    def _error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, TimeoutError):
            exc = redis.TimeoutError(f"no reply within {self.settings.socket_timeout_s:g}s")
        return translate(exc, self.url) or exc

    # -- auto-pipelined writes (``aio_writer``) --------------------------------------
    def submit(self, commands: list[bytes], future: asyncio.Future[Any] | None = None,
               value: Any = REPLIES) -> asyncio.Future[Any]:
        """Queue one call's packed commands for the write of this turn; the future (a
        new one, or ``future``) gets its replies (or ``value``), or its first error
        reply (as a streamq error). See ``AsyncWriter.submit``."""
        return self._batcher.submit(commands, future, value)

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
        failed = failure(replies)
        if failed is not None:
            raise self._error(failed)
        return replies

    async def ensure_scripts(self) -> None:
        """Load the scripts on the server once, for an exchange that cannot afford a
        NOSCRIPT: a mark followed by a blocking read in the same round trip."""
        if not self._scripts_loaded:
            await self.run_checked(LOADS)
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
        failed = failure([status])
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
        await self._batcher.aclose()
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
