"""Moves encoded messages between Redis keys; knows nothing of tasks or serializers.

Every multi-key move is a Lua script from ``lua/`` on one queue's keys (one hash
tag), run by SHA through redis-py's ``Script`` (which reloads after NOSCRIPT).
Hot-path calls take a pipeline so callers batch them into one round trip.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from . import keys
from .connection import is_busygroup, is_nogroup, make_client, redis_errors, resolve_url
from .settings import Settings, mask_url

log = logging.getLogger(__name__)

_SCRIPT_NAMES = ("ack", "retry", "dead", "promote", "heartbeat", "release", "requeue_dead",
                 "records", "enqueue", "enqueue_many")


def _load_lua(name: str) -> str:
    return resources.files("streamq").joinpath(f"lua/{name}.lua").read_text("utf-8")


_LUA = {name: _load_lua(name) for name in _SCRIPT_NAMES}
_SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _LUA.items()}


@dataclass(slots=True)
class Delivery:
    """One stream entry handed to this consumer."""

    queue: str
    entry_id: str
    raw: bytes | None
    """The encoded message; None when the entry was deleted while pending."""
    deliveries: int = 1


class Broker:
    """Stream operations for one app in one process (clients are made lazily)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self._url: str | None = None
        self._client: redis.Redis | None = None
        self._blocking: redis.Redis | None = None
        self._known_queues: set[str] = set()
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

    def _load_scripts(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name in _SCRIPT_NAMES:
            pipe.script_load(_LUA[name])
        pipe.execute()

    # -- producing --------------------------------------------------------------
    def enqueue(self, target: Any, record_key: str, record: dict[str, Any], ttl_s: int,
                queue: str, task_id: str, encoded: str, due_ms: int | None) -> Any:
        """The record and the message (stream, or delayed set when ``due_ms``) in one
        script call, queued on a pipeline or run on a client."""
        if due_ms:
            keys_ = [record_key, keys.delayed(self.ns, queue), keys.delayed_messages(self.ns,
                                                                                    queue)]
        else:
            keys_ = [record_key, keys.stream(self.ns, queue)]
        args: list[Any] = [ttl_s, encoded, due_ms or "", task_id]
        for k, v in record.items():
            if v is not None:
                args += [k, v]
        return self.evalsha(target, "enqueue", keys_, args)

    def enqueue_many(self, pipe: Any, queue: str, record_keys: list[str],
                     record: dict[str, Any], ttl_s: int, encoded: list[str]) -> None:
        """Messages of one queue that share one record template, in one script call."""
        fv: list[Any] = []
        for k, v in record.items():
            if v is not None:
                fv += [k, v]
        self.evalsha(pipe, "enqueue_many", [keys.stream(self.ns, queue), *record_keys],
                     [ttl_s, len(fv) // 2, *fv, *encoded])

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

    def read(self, consumer: str, queues: list[str], count: int, block_ms: int | None,
             pipe: Any = None) -> list[Delivery]:
        """XREADGROUP new entries; recreates lost groups (server restarted empty).

        With ``pipe`` the read rides in the caller's pipeline, after whatever
        writes it carries, so a flush and the next read are one round trip."""
        streams = {keys.stream(self.ns, q): ">" for q in queues}
        try:
            if pipe is None:
                reply = self.blocking_client.xreadgroup(keys.GROUP, consumer, streams,
                                                        count=count, block=block_ms)
            else:
                pipe.xreadgroup(keys.GROUP, consumer, streams, count=count, block=block_ms)
                reply = self.execute(pipe)[-1]
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            log.warning("Consumer group missing on %s (server restarted without its data?); "
                        "recreating it.", self.masked_url)
            for q in queues:
                self.ensure_group(q, force=True)
            return []
        out: list[Delivery] = []
        by_stream = {keys.stream(self.ns, q): q for q in queues}
        for stream_key, entries in reply or ():
            queue = by_stream[_s(stream_key)]
            for entry_id, fields in entries:
                out.append(Delivery(queue, _s(entry_id), fields.get(b"m") if fields else None))
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


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_s = as_str
