"""The queue's streams: enqueue (records first), consumer groups, and reads.

Knows messages only as encoded strings and records as field/value pairs built by
``streamq.data.record``. delay() writes the record (HSET, EXPIRE) then the message
(XADD; delayed: HSET + ZADD in a MULTI) as native commands in one write: about 12 us
of server work, against 35 us for the same steps in a script. A run of calls of one
task to one queue (map()) is one ``enqueue_many`` script per 100 calls instead: one
reply per 100 calls costs the client far less than three per call, and the server
runs one chunk while the next is packed (``Transport.send``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..base import keys
from ..base.errors import BrokerError
from ..base.settings import Settings
from ..data.outcome import Delivery
from .connection import Connection
from .transport import EXEC, MULTI, Packed, Transport, pack, script_command

log = logging.getLogger(__name__)


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Broker:
    """Enqueueing to and reading from the streams of one namespace."""

    def __init__(self, transport: Transport, settings: Settings) -> None:
        self.transport = transport
        self.connection: Connection = transport.connection
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self._known_queues: set[str] = set()
        self._groups: set[str] = set()

    # -- producing -------------------------------------------------------------------
    def enqueue_commands(self, out: list[bytes], task_id: str, queue: str,
                         record: list[Any], ttl_s: int, encoded: str, due_ms: int | None,
                         routed: bool) -> None:
        """Append the packed commands of one enqueue to ``out``: the record first, so
        a message never exists without its record and its id never reads UNKNOWN.
        ``routed``: the id carries its queue; otherwise its queue is written where
        ``AsyncResult`` looks it up (``keys.task_queue``)."""
        ns = self.ns
        record_key = keys.record(ns, queue, task_id)
        if not routed:
            out.append(pack("SET", keys.task_queue(ns, task_id), queue, "EX", ttl_s))
        if due_ms:
            # A transaction: a connection lost between the delayed message (a hash
            # field with no TTL) and its ZADD would leave the message forever.
            out += (MULTI, pack("HSET", record_key, *record), pack("EXPIRE", record_key, ttl_s),
                    pack("HSET", keys.delayed_messages(ns, queue), task_id, encoded),
                    pack("ZADD", keys.delayed(ns, queue), due_ms, task_id), EXEC)
        else:
            out.append(pack("HSET", record_key, *record))
            out.append(pack("EXPIRE", record_key, ttl_s))
            out.append(pack("XADD", keys.stream(ns, queue), "*", "m", encoded))
        self._note_queue(out, queue)

    def enqueue_many_command(self, out: list[bytes], queue: str, task_ids: list[str],
                             record: list[Any], encoded: list[str]) -> None:
        """Append one script call enqueueing messages of one queue that share one
        record template (``record``: field/value pairs), records first."""
        ns = self.ns
        out.append(script_command(
            "enqueue_many", [keys.stream(ns, queue), *(keys.record(ns, queue, t)
                                                       for t in task_ids)],
            [self.ttl_s, len(record) // 2, *record, *encoded]))
        self._note_queue(out, queue)

    def _note_queue(self, out: list[bytes], queue: str) -> None:
        if queue not in self._known_queues:  # SADD once per queue and process
            self._known_queues.add(queue)
            out.append(pack("SADD", keys.queues(self.ns), queue))

    def send_one(self, commands: list[bytes]) -> None:
        self.transport.run(Packed(commands))

    def send_many(self, batches: Iterable[list[bytes]]) -> None:
        self.transport.send(batches)

    # -- consumer groups -------------------------------------------------------------
    def ensure_group(self, queue: str, *, force: bool = False) -> None:
        if queue in self._groups and not force:
            return
        client = self.connection.client
        try:
            # From id 0, so messages enqueued before any worker existed are delivered.
            client.xgroup_create(keys.stream(self.ns, queue), keys.GROUP, "0", mkstream=True)
        except BrokerError as exc:
            if exc.code != "BUSYGROUP":
                raise
        client.sadd(keys.queues(self.ns), queue)
        self._groups.add(queue)

    def recreate_groups(self, queues: Iterable[str]) -> None:
        """After NOGROUP: the server lost the group (restarted without its data?)."""
        log.warning("Consumer group missing on %s (server restarted without its data?); "
                    "recreating it.", self.connection.masked_url)
        for q in queues:
            self.ensure_group(q, force=True)

    def queues(self) -> list[str]:
        return sorted(as_str(q) for q in self.connection.client.smembers(keys.queues(self.ns)))

    # -- reading ---------------------------------------------------------------------
    def read(self, consumer: str, queues: list[str], count: int, block_ms: int | None,
             pipe: Packed | None = None) -> list[Delivery]:
        """XREADGROUP new entries; recreates lost groups (server restarted empty).

        With ``pipe`` the read rides after whatever writes it carries, so a flush and
        the next read are one round trip (the writes take effect before it blocks)."""
        pipe = pipe if pipe is not None else Packed()
        streams = [keys.stream(self.ns, q) for q in queues]
        block = () if block_ms is None else ("BLOCK", block_ms)
        pipe.command("XREADGROUP", "GROUP", keys.GROUP, consumer, "COUNT", count, *block,
                     "STREAMS", *streams, *(">" for _ in streams))
        try:
            reply = self.transport.run(pipe, blocking=True)[-1]
        except BrokerError as exc:
            if exc.code != "NOGROUP":
                raise
            self.recreate_groups(queues)
            return []
        out: list[Delivery] = []
        by_stream = dict(zip(streams, queues, strict=True))
        # RESP3 (redis-py 8's default) answers a map, RESP2 a list of pairs.
        pairs = reply.items() if isinstance(reply, dict) else reply or ()
        for stream_key, entries in pairs:
            queue = by_stream[as_str(stream_key)]
            for entry_id, fields in entries:
                out.append(Delivery(queue, as_str(entry_id), entry_message(fields)))
        return out


def entry_message(fields: Any) -> bytes | None:
    """The encoded message of a stream entry's fields (a flat list or a dict).

    An entry written by something else is kept as the repr of its fields: it fails to
    decode and goes to dead letters, where it can be read, instead of vanishing."""
    if not fields:
        return None
    if isinstance(fields, dict):
        if len(fields) == 1 and b"m" in fields:
            return fields[b"m"]  # type: ignore[no-any-return]
        return repr(fields).encode()
    if len(fields) == 2 and fields[0] == b"m":
        return fields[1]  # type: ignore[no-any-return]
    return repr(fields).encode()
