"""Moves encoded messages between Redis keys; knows nothing of tasks or serializers.

Every move that must be atomic is a Lua script from ``lua/`` on one queue's keys (one
hash tag), run by SHA (reloaded after NOSCRIPT). Hot-path commands are packed by
hiredis and sent in batches, one round trip per batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from hiredis import pack_command as _pack  # hiredis comes with redis[hiredis]

from . import keys
from .connection import is_busygroup, is_nogroup, make_client, redis_errors, resolve_url
from .settings import Settings, mask_url

log = logging.getLogger(__name__)

_SCRIPT_NAMES = ("ack", "retry", "dead", "promote", "heartbeat", "release", "requeue_dead",
                 "records", "enqueue_many", "wait")


def _load_lua(name: str) -> str:
    return resources.files("streamq").joinpath(f"lua/{name}.lua").read_text("utf-8")


_LUA = {name: _load_lua(name) for name in _SCRIPT_NAMES}
_MULTI, _EXEC = _pack(("MULTI",)), _pack(("EXEC",))
_SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _LUA.items()}


@dataclass(slots=True)
class Delivery:
    """One stream entry handed to this consumer."""

    queue: str
    entry_id: str
    raw: bytes | None
    """The encoded message; None when the entry was deleted while pending."""
    deliveries: int = 1


class Packed:
    """A pipeline for the hot path: each command is packed by hiredis as it is
    queued (redis-py's pipeline encodes every argument in Python, which cost the
    worker more than the server's work), and ``Broker.run`` sends them in one write.
    Offers the few pipeline methods the hot path uses."""

    __slots__ = ("commands",)

    def __init__(self, commands: list[bytes] | None = None) -> None:
        self.commands: list[bytes] = commands if commands is not None else []

    def __len__(self) -> int:
        return len(self.commands)

    def execute_command(self, *args: Any) -> None:
        self.commands.append(_pack(args))

    def evalsha(self, *args: Any) -> None:
        self.commands.append(_pack(("EVALSHA", *args)))

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.commands.append(_pack(("HINCRBY", key, field, amount)))

    def expire(self, key: str, seconds: int) -> None:
        self.commands.append(_pack(("EXPIRE", key, seconds)))


class Broker:
    """Stream operations for one app in one process (clients are made lazily)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self._url: str | None = None
        self._client: redis.Redis | None = None
        self._blocking: redis.Redis | None = None
        self._known_queues: set[str] = set()
        self._scripts_loaded = False
        self._own: dict[int, Any] = {}  # see _connection()
        self._own_pid = os.getpid()
        self._own_lock = threading.Lock()
        self._groups: set[str] = set()

    # -- clients ---------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._url is None:
            self._url = resolve_url(self.settings)
        return self._url

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = make_client(self.url, self.settings)
        return self._client

    @property
    def blocking_client(self) -> redis.Redis:
        if self._blocking is None:
            self._blocking = make_client(self.url, self.settings, blocking=True)
        return self._blocking

    def errors(self) -> Any:
        return redis_errors(self._url or self.settings.url)

    def close(self) -> None:
        for c in (self._client, self._blocking):
            if c is not None:
                c.close()
        self._client = self._blocking = None
        if self._own_pid == os.getpid():
            for conn in self._own.values():
                conn.disconnect()
        self._own = {}

    # -- scripts -------------------------------------------------------------------------
    # EVALSHA is sent directly (not through redis-py's Script in a pipeline, which costs
    # a SCRIPT EXISTS round trip per execute); a server that lost its script cache
    # answers NOSCRIPT, and only those commands are sent again after a reload.
    def evalsha(self, target: Any, name: str, keys_: list[str], args: list[Any]) -> Any:
        """Queue one script by SHA on a pipeline, or run it now when ``target`` is
        the client itself."""
        if target is self._client:
            return self.call(name, keys_, args)
        return target.evalsha(_SHA[name], len(keys_), *keys_, *args)

    def call(self, name: str, keys_: list[str], args: list[Any]) -> Any:
        """Run one script now (loading the scripts if the server lost them)."""
        try:
            return self.client.evalsha(_SHA[name], len(keys_), *keys_, *args)
        except redis.exceptions.NoScriptError:
            self._load_scripts()
            return self.client.evalsha(_SHA[name], len(keys_), *keys_, *args)

    def execute(self, pipe: Any) -> list[Any]:
        """Execute a pipeline, re-sending commands that met NOSCRIPT; the first other
        error is raised after every command has run."""
        stack = list(pipe.command_stack)
        replies = pipe.execute(raise_on_error=False)
        missing = [i for i, r in enumerate(replies)
                   if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            self._load_scripts()
            again = self.client.pipeline(transaction=False)
            for i in missing:
                args, options = stack[i]
                again.execute_command(*args, **options)
            for i, r in zip(missing, again.execute(raise_on_error=False), strict=True):
                replies[i] = r
        for r in replies:
            if isinstance(r, Exception):
                raise r
        return replies

    @contextlib.contextmanager
    def _connection(self, client: redis.Redis) -> Iterator[Any]:
        """A connection of ``client``'s kind for one exchange: this process's own one
        when it is free, because taking one from redis-py's pool (with its health
        and observability hooks) costs more than the round trip of a delay(); one
        from the pool when another thread holds it."""
        if os.getpid() != self._own_pid:  # a fork: the parent's connections are not ours
            self._own, self._own_pid, self._own_lock = {}, os.getpid(), threading.Lock()
        if self._own_lock.acquire(blocking=False):
            try:
                conn = self._own.get(id(client))
                if conn is None:
                    pool = client.connection_pool
                    conn = self._own[id(client)] = pool.connection_class(
                        **pool.connection_kwargs)
                yield conn
            finally:
                self._own_lock.release()
            return
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            yield conn
        finally:
            pool.release(conn)

    def run(self, packed: Packed, client: redis.Redis | None = None) -> list[Any]:
        """Send ``packed`` in one write on a connection of ``client`` (the broker's
        client by default) and return the replies in order. As ``execute``: commands
        that met NOSCRIPT are sent again after a reload, and the first other error is
        raised after every command has run."""
        with self._connection(client or self.client) as conn:
            replies = _with_retry(conn, lambda: _send_read(conn, packed.commands))
        missing = [i for i, r in enumerate(replies)
                   if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            self._load_scripts()
            again = Packed()
            again.commands = [packed.commands[i] for i in missing]
            for i, r in zip(missing, self.run(again), strict=True):
                replies[i] = r
        for r in replies:
            if isinstance(r, Exception):
                raise r
            if type(r) is list and r and r[0].__class__ is not list:  # an EXEC's replies
                for item in r:
                    if isinstance(item, Exception):
                        raise item
        return replies

    def _load_scripts(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name in _SCRIPT_NAMES:
            pipe.script_load(_LUA[name])
        pipe.execute()
        self._scripts_loaded = True

    def ensure_scripts(self) -> None:
        """Load the scripts once per broker, for a caller that cannot afford a NOSCRIPT:
        one whose script shares a round trip with a blocking read that depends on it
        (a server that loses its scripts later costs that caller one wait slice)."""
        if not self._scripts_loaded:
            with self.errors():
                self._load_scripts()

    # -- producing --------------------------------------------------------------
    # delay() writes the record (HSET, EXPIRE) then the message (XADD; delayed: HSET +
    # ZADD) as native commands in one write: about 12 us of server work, against 35 us
    # for the same steps in a script. A run of calls of one task to one queue (map())
    # is one enqueue_many script per 100 calls instead: one reply per 100 calls costs
    # the client far less than three per call, and the server runs one chunk while the
    # next is packed (see send()).
    def enqueue_commands(self, out: list[bytes], record_key: str, record: list[Any],
                         ttl_s: int, queue: str, task_id: str, encoded: str,
                         due_ms: int | None) -> None:
        """Append the packed commands of one enqueue to ``out``: the record first, so
        a message never exists without its record and its id never reads UNKNOWN."""
        if due_ms:
            # A transaction: a connection lost between the delayed message (a hash
            # field with no TTL) and its ZADD would leave the message forever.
            out += (_MULTI, _pack(("HSET", record_key, *record)),
                    _pack(("EXPIRE", record_key, ttl_s)),
                    _pack(("HSET", keys.delayed_messages(self.ns, queue), task_id, encoded)),
                    _pack(("ZADD", keys.delayed(self.ns, queue), due_ms, task_id)), _EXEC)
            return
        out.append(_pack(("HSET", record_key, *record)))
        out.append(_pack(("EXPIRE", record_key, ttl_s)))
        out.append(_pack(("XADD", keys.stream(self.ns, queue), "*", "m", encoded)))

    def enqueue_many_command(self, queue: str, record_keys: list[str], record: list[Any],
                             ttl_s: int, encoded: list[str]) -> bytes:
        """One packed script call enqueueing messages of one queue that share one
        record template (``record``: field/value pairs), records first."""
        return _pack(("EVALSHA", _SHA["enqueue_many"], 1 + len(record_keys),
                      keys.stream(self.ns, queue), *record_keys, ttl_s, len(record) // 2,
                      *record, *encoded))

    @staticmethod
    def pack(*args: Any) -> bytes:
        return _pack(args)

    def send(self, batches: Iterable[list[bytes]]) -> None:
        """Send batches of packed commands on one connection, in order.

        Batches are packed lazily and streamed: the next is packed and sent while
        the server runs the one before, with at most two unanswered. The first error
        reply is raised once every reply has been read; scripts the server lost
        (NOSCRIPT: nothing ran) are loaded and their commands sent again. A lost
        connection is retried as redis-py retries any command: what got no answer is
        sent again, so (as for any command) a batch whose reply was lost after the
        server ran it runs twice."""
        stream = _CommandStream(batches)
        with self._connection(self.client) as conn:
            stream.run(conn)
        if stream.noscript:
            self._load_scripts()
            again = _CommandStream([stream.noscript])
            with self._connection(self.client) as conn:
                again.run(conn)

    def note_queue(self, queue: str) -> bool:
        """True the first time this process enqueues to ``queue`` (then SADD it)."""
        if queue in self._known_queues:
            return False
        self._known_queues.add(queue)
        return True

    # -- consuming ----------------------------------------------------------------
    def ensure_group(self, queue: str, *, force: bool = False) -> None:
        if queue in self._groups and not force:
            return
        with self.errors():
            try:
                # From id 0, so messages enqueued before any worker existed are delivered.
                self.client.xgroup_create(keys.stream(self.ns, queue), keys.GROUP, "0",
                                          mkstream=True)
            except redis.ResponseError as exc:
                if not is_busygroup(exc):
                    raise
            self.client.sadd(keys.queues(self.ns), queue)
        self._groups.add(queue)

    def recreate_groups(self, queues: list[str]) -> None:
        """After NOGROUP: the server lost the group (restarted without its data?)."""
        log.warning("Consumer group missing on %s (server restarted without its data?); "
                    "recreating it.", self.masked_url)
        for q in queues:
            self.ensure_group(q, force=True)

    def read(self, consumer: str, queues: list[str], count: int, block_ms: int | None,
             pipe: Packed | None = None) -> list[Delivery]:
        """XREADGROUP new entries; recreates lost groups (server restarted empty).

        With ``pipe`` the read rides after whatever writes it carries, so a flush and
        the next read are one round trip (the writes take effect before it blocks)."""
        pipe = pipe if pipe is not None else Packed()
        streams = [keys.stream(self.ns, q) for q in queues]
        block = () if block_ms is None else ("BLOCK", block_ms)
        pipe.execute_command("XREADGROUP", "GROUP", keys.GROUP, consumer, "COUNT", count,
                             *block, "STREAMS", *streams, *(">" for _ in streams))
        try:
            reply = self.run(pipe, self.blocking_client)[-1]
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self.recreate_groups(queues)
            return []
        out: list[Delivery] = []
        by_stream = dict(zip(streams, queues, strict=True))
        # RESP3 (redis-py 8's default) answers a map, RESP2 a list of pairs.
        pairs = reply.items() if isinstance(reply, dict) else reply or ()
        for stream_key, entries in pairs:
            queue = by_stream[_s(stream_key)]
            for entry_id, fields in entries:
                # [b"m", message] as enqueue writes it. An entry written by something
                # else is kept as the repr of its fields: it fails to decode and goes
                # to dead letters, where it can be read, instead of vanishing.
                raw = (fields[1] if fields[0] == b"m" and len(fields) == 2
                       else repr(fields).encode()) if fields else None
                out.append(Delivery(queue, _s(entry_id), raw))
        return out

    def pending_of(self, queue: str, consumer: str, count: int = 1000) -> list[dict[str, Any]]:
        return self.client.xpending_range(keys.stream(self.ns, queue), keys.GROUP, "-", "+",
                                          count, consumername=consumer)

    def claim(self, queue: str, consumer: str, entry_ids: list[str], min_idle_ms: int
              ) -> list[Delivery]:
        """XCLAIM entries to ``consumer``; deleted entries drop out (Redis 7+)."""
        if not entry_ids:
            return []
        stream = keys.stream(self.ns, queue)
        claimed = self.client.xclaim(stream, keys.GROUP, consumer, min_idle_ms, entry_ids)
        return self._with_counts(queue, consumer, claimed)

    def autoclaim(self, queue: str, consumer: str, min_idle_ms: int, count: int
                  ) -> list[Delivery]:
        """XAUTOCLAIM one page of entries idle longer than ``min_idle_ms``."""
        stream = keys.stream(self.ns, queue)
        reply = self.client.xautoclaim(stream, keys.GROUP, consumer, min_idle_ms, "0-0",
                                       count=count)
        return self._with_counts(queue, consumer, reply[1])

    def _with_counts(self, queue: str, consumer: str, claimed: list[Any]) -> list[Delivery]:
        entries = [(e[0], e[1]) for e in claimed if e and e[0] is not None]
        if not entries:
            return []
        ids = [_s(e[0]) for e in entries]
        pend = self.client.xpending_range(keys.stream(self.ns, queue), keys.GROUP, ids[0],
                                          ids[-1], len(ids) + 100, consumername=consumer)
        counts = {_s(p["message_id"]): int(p["times_delivered"]) for p in pend}
        return [Delivery(queue, i, (f or {}).get(b"m"), counts.get(i, 1))
                for i, (_, f) in zip(ids, entries, strict=True)]

    def ack(self, pipe: Any, queue: str, entry_ids: list[str]) -> None:
        self.evalsha(pipe, "ack", [keys.stream(self.ns, queue)], [keys.GROUP, *entry_ids])

    def retry(self, pipe: Any, consumer: str, d: Delivery, task_id: str, due_ms: int,
              encoded: str) -> None:
        q = d.queue
        self.evalsha(pipe, "retry",
                     [keys.stream(self.ns, q), keys.delayed(self.ns, q),
                      keys.delayed_messages(self.ns, q)],
                     [keys.GROUP, consumer, d.entry_id, task_id, due_ms, encoded])

    def dead_letter(self, pipe: Any, consumer: str, d: Delivery, *, reason: str, task: str,
                    task_id: str, at_ms: int, retries: int) -> None:
        q = d.queue
        self.evalsha(pipe, "dead", [keys.stream(self.ns, q), keys.dead(self.ns, q)],
                     [keys.GROUP, consumer, d.entry_id, d.raw or b"", reason, task, task_id,
                      at_ms, d.deliveries, retries])

    def heartbeat(self, queue: str, consumer: str, entry_ids: list[str]) -> list[str]:
        """Refresh idle time of entries still ours; returns the ids we lost."""
        lost = self.call("heartbeat", [keys.stream(self.ns, queue)],
                         [keys.GROUP, consumer, *entry_ids])
        return [_s(x) for x in lost]

    def release(self, queue: str, consumer: str, items: list[tuple[str, bytes]]) -> int:
        args: list[Any] = [keys.GROUP, consumer]
        for entry_id, raw in items:
            args += [entry_id, raw]
        return int(self.call("release", [keys.stream(self.ns, queue)], args))

    def promote(self, queue: str, now_ms: int, limit: int = 500) -> tuple[int, int | None]:
        moved, nxt = self.call("promote", [keys.delayed(self.ns, queue),
                                           keys.delayed_messages(self.ns, queue),
                                           keys.stream(self.ns, queue)], [now_ms, limit])
        return int(moved), (None if int(nxt) < 0 else int(nxt))

    def queues(self) -> list[str]:
        return sorted(_s(q) for q in self.client.smembers(keys.queues(self.ns)))


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
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


class _CommandStream:
    """The send/read loop of ``Broker.send``; resumable after a reconnect."""

    __slots__ = ("source", "unanswered", "error", "noscript")

    def __init__(self, batches: Iterable[list[bytes]]) -> None:
        self.source = iter(batches)
        self.unanswered: deque[list[bytes]] = deque()
        self.error: Exception | None = None
        self.noscript: list[bytes] = []  # commands to send again once scripts are loaded

    def run(self, conn: Any) -> None:
        _with_retry(conn, lambda: self._run(conn))

    def _run(self, conn: Any) -> None:
        if self.unanswered:  # a reconnect: send again what got no answer
            conn.send_packed_command([b"".join(c) for c in self.unanswered],
                                     check_health=False)
        for commands in self.source:
            self.unanswered.append(commands)  # first: a failed send is sent again
            conn.send_packed_command([b"".join(commands)], check_health=False)
            if len(self.unanswered) > 1:
                self._read(conn)
        while self.unanswered:
            self._read(conn)
        if self.error is not None:
            raise self.error

    def _read(self, conn: Any) -> None:
        for command in self.unanswered[0]:
            try:
                reply = conn.read_response()
            except redis.exceptions.NoScriptError:
                self.noscript.append(command)
            except redis.ResponseError as exc:
                self.error = self.error or exc
            else:
                if command is _EXEC and reply:  # errors of a transaction's commands
                    self.error = self.error or next(
                        (r for r in reply if isinstance(r, Exception)), None)
        self.unanswered.popleft()


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_s = as_str
