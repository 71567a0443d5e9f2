"""The queue's streams: enqueue (records first), consumer groups, and reads.

Knows messages only as encoded strings and records as field/value pairs built by
``streamq.data.record``. delay() writes the record (HSET, EXPIRE) then the message
(XADD; an eta: HSET + ZADD in a MULTI) as native commands in one write: about 12 us
of server work, against 35 us for the same steps in a script. A countdown is one
script (``schedule.lua``), since only the server's clock, not the
producer's, may turn it into a due time. A run of calls of one task to one queue
(map()) is one ``enqueue_many`` script per 100 calls instead: one reply per 100 calls
costs the client far less than three per call, and the server runs one chunk while
the next is packed (``Transport.send``).

A durable enqueue appends ``WAITAOF 1 <replicas> <ms>`` to that same write, on the
same connection (WAITAOF waits for its own connection's writes), or ``WAIT`` on a
server without it (Redis < 7.2): ``durable.Durability`` decides which and reads the
reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.crc import key_slot

from ..base import keys
from ..base.errors import BrokerError
from ..base.partitions import logical
from ..base.settings import Settings
from ..data.outcome import Delivery
from .connection import Connection
from .durable import Durability
from .partitioning import check_count
from .translate import as_str
from .transport import EXEC, MULTI, Packed, Transport, pack, script_command

__all__ = ["Broker", "as_str", "entry_message"]

log = logging.getLogger(__name__)


class Broker:
    """Enqueueing to and reading from the streams of one namespace."""

    def __init__(self, transport: Transport, settings: Settings) -> None:
        self.transport = transport
        self.connection: Connection = transport.connection
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self._known_queues: set[str] = set()
        self._groups: set[str] = set()
        self._slot_groups: dict[tuple[str, ...], list[list[str]]] = {}
        self._turn = 0
        self.durability = Durability(transport)
        self.partitions: dict[str, tuple[str, ...]] = {}
        """The app's partitioned queues (``StreamQ.queue``), checked at first use."""
        self._checked: set[str] = set()

    # -- producing -------------------------------------------------------------------
    def enqueue_commands(self, out: list[bytes], task_id: str, queue: str,
                         record: list[Any] | None, ttl_s: int, encoded: bytes | str,
                         due_ms: int | None,
                         routed: bool, *, countdown_ms: int | None = None,
                         order_key: str | None = None) -> None:
        """Append the packed commands of one enqueue to ``out``: the record first, so
        a message never exists without its record and its id never reads UNKNOWN.
        ``routed``: the id carries its queue; otherwise its queue is written where
        ``AsyncResult`` looks it up (``keys.task_queue``).

        ``countdown_ms`` (> 0): due that long after the server's clock (TIME), which
        the server reads itself: the producer's clock may be off by minutes. It wins
        over ``due_ms``, which then only served the caller's record (the script writes
        the server's due time into it). ``due_ms`` alone is an absolute wall-clock
        time (an ``eta``), kept as given. ``ttl_s`` must cover the wait either way.

        ``record=None`` (``ignore_result``): nothing but the message is written."""
        ns = self.ns
        record_key = keys.record(ns, queue, task_id)
        if record is None:
            self._enqueue_bare(out, task_id, queue, encoded, due_ms, countdown_ms)
            return
        if not routed:
            out.append(pack("SET", keys.task_queue(ns, task_id), queue, "EX", ttl_s))
        if order_key is not None:  # its number among the key's calls, with the record
            out.append(script_command(
                "enqueue_keyed", [record_key, keys.stream(ns, queue), keys.order(ns, queue)],
                [ttl_s, encoded, order_key, *record]))
        elif countdown_ms is not None and countdown_ms > 0:
            # One script (atomic like the transaction below): only the server's clock
            # turns the countdown into a due time.
            out.append(script_command(
                "schedule", [keys.delayed(ns, queue), keys.delayed_messages(ns, queue),
                             record_key],
                [task_id, encoded, int(countdown_ms), ttl_s, *record]))
        elif due_ms:
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

    def _enqueue_bare(self, out: list[bytes], task_id: str, queue: str,
                      encoded: bytes | str, due_ms: int | None,
                      countdown_ms: int | None) -> None:
        """The message of a call whose result nobody wants, without a record (the
        schedule script skips it for a TTL of 0)."""
        ns = self.ns
        if countdown_ms is not None and countdown_ms > 0:
            out.append(script_command(
                "schedule", [keys.delayed(ns, queue), keys.delayed_messages(ns, queue),
                             keys.record(ns, queue, task_id)],
                [task_id, encoded, int(countdown_ms), 0]))
        elif due_ms:
            out += (MULTI, pack("HSET", keys.delayed_messages(ns, queue), task_id, encoded),
                    pack("ZADD", keys.delayed(ns, queue), due_ms, task_id), EXEC)
        else:
            out.append(pack("XADD", keys.stream(ns, queue), "*", "m", encoded))
        self._note_queue(out, queue)

    def enqueue_many_command(self, out: list[bytes], queue: str, task_ids: list[str],
                             record: list[Any], encoded: list[bytes | str]) -> None:
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
            self.check_partitions(logical(queue))

    def check_partitions(self, queue: str) -> None:
        """Once per process: that the server's number of partitions of ``queue`` (if
        it is partitioned) is the declared one (``partitioning.check_count``)."""
        declared = self.partitions.get(queue)
        if declared is not None and queue not in self._checked:
            check_count(self.connection, self.ns, queue, len(declared))
            self._checked.add(queue)

    def send_one(self, commands: list[bytes]) -> None:
        self.transport.run(Packed(commands))

    def send_durable(self, commands: list[bytes], wait: bytes) -> Any:
        """``send_one`` with ``wait`` (from ``durability.wait``) in the same write; returns
        its reply, for ``not_durable``."""
        return self.transport.run_durable(commands, wait)

    def send_many(self, batches: Iterable[list[bytes]], answered: list[bool],
                  wait: bytes | None = None) -> Any:
        """Stream ``batches``; ``answered`` gets True for each batch the server wrote.
        Scripts are loaded first (once per process): after a NOSCRIPT every batch's
        script would be sent again, after the rest, out of order. ``wait`` follows the
        last batch (one wait covers every write before it); its reply is returned."""
        self.transport.ensure_scripts()
        return self.transport.send(batches, answered, wait)

    # -- consumer groups -------------------------------------------------------------
    def ensure_group(self, queue: str, *, force: bool = False) -> bool:
        """Create the consumer group (and stream) of ``queue``; False when a full
        server refused it and there is no group yet (nothing to drain there)."""
        if queue in self._groups and not force:
            return True
        client = self.connection.client
        stream = keys.stream(self.ns, queue)
        try:
            # From id 0, so messages enqueued before any worker existed are delivered.
            client.xgroup_create(stream, keys.GROUP, "0", mkstream=True)
            client.sadd(keys.queues(self.ns), queue)
        except BrokerError as exc:
            # A full server refuses XGROUP CREATE even when the group exists; reading
            # is what frees memory then, so go on if the group is there.
            if exc.code == "OOM":
                if not self._group_exists(stream):
                    log.warning("The server at %s is out of memory (maxmemory): cannot "
                                "create queue %s yet.", self.connection.masked_url, queue)
                    return False
                log.warning("The server at %s is out of memory (maxmemory); reading "
                            "queue %s to drain it.", self.connection.masked_url, queue)
            elif exc.code != "BUSYGROUP":
                raise
        self._groups.add(queue)
        return True

    def _group_exists(self, stream: str) -> bool:
        try:
            groups = self.connection.client.xinfo_groups(stream)
        except BrokerError:
            return False
        return any(as_str(g["name"]) == keys.GROUP for g in groups)

    def recreate_groups(self, queues: Iterable[str]) -> None:
        """After NOGROUP: the server lost the group (restarted without its data?)."""
        log.warning("Consumer group missing on %s (server restarted without its data?); "
                    "recreating it.", self.connection.masked_url)
        for q in queues:
            self.ensure_group(q, force=True)

    def forget_consumers(self, queues: Iterable[str], names: set[str]) -> int:
        """Delete the consumers ``names`` that hold nothing pending, from each queue's
        group: those of a worker that stopped cleanly, which nobody reads as again.
        One that still holds entries is kept, for recovery to find. Returns how many
        were deleted."""
        client = self.connection.client
        deleted = 0
        for q in queues:
            stream = keys.stream(self.ns, q)
            try:
                consumers = client.xinfo_consumers(stream, keys.GROUP)
            except BrokerError as exc:
                if exc.code == "NOGROUP":
                    continue
                raise
            for c in consumers:
                name = as_str(c["name"])
                if name in names and int(c.get("pending", 0)) == 0:
                    client.xgroup_delconsumer(stream, keys.GROUP, name)
                    deleted += 1
        return deleted

    def queues(self) -> list[str]:
        return sorted(as_str(q) for q in self.connection.client.smembers(keys.queues(self.ns)))

    # -- reading ---------------------------------------------------------------------
    def read(self, consumer: str, queues: list[str], count: int, block_ms: int | None,
             pipe: Packed | None = None) -> list[Delivery]:
        """XREADGROUP new entries; recreates lost groups (server restarted empty).

        With ``pipe`` the read rides after whatever writes it carries, so a flush and
        the next read are one round trip (the writes take effect before it blocks)."""
        pipe = pipe if pipe is not None else Packed()
        groups = self._groups_by_slot(queues)
        if len(groups) == 1:
            return self._read(pipe, consumer, queues, count, block_ms)
        # A cluster-mode server refuses one read across slots: one read per slot, none
        # blocking; when all are empty, one blocking read per node (on one of its
        # slots, in turn), briefly: the router sends them to every node at once.
        for group in groups[:-1]:
            self._read_command(pipe, consumer, group, count, None)
        got = self._read(pipe, consumer, groups[-1], count, None, replies=len(groups),
                         every=queues)
        if got or not block_ms:
            return got
        self._turn += 1
        blocking = self._one_per_node(groups)
        pipe = Packed()
        for group in blocking[:-1]:
            self._read_command(pipe, consumer, group, count, min(block_ms, 50))
        return self._read(pipe, consumer, blocking[-1], count, min(block_ms, 50),
                          replies=len(blocking), every=queues)

    def _one_per_node(self, groups: list[list[str]]) -> list[list[str]]:
        """Of each node's slot groups, the one whose turn it is (a single server: one)."""
        if not self.connection.is_cluster:
            return [groups[self._turn % len(groups)]]
        nodes = self.connection.client.nodes_manager  # type: ignore[attr-defined]
        by_node: dict[str, list[list[str]]] = {}
        for group in groups:
            slot = key_slot(keys.stream(self.ns, group[0]).encode())
            by_node.setdefault(nodes.get_node_from_slot(slot).name, []).append(group)
        return [mine[self._turn % len(mine)] for mine in by_node.values()]

    def _read_command(self, pipe: Packed, consumer: str, queues: list[str], count: int,
                      block_ms: int | None) -> None:
        block = () if block_ms is None else ("BLOCK", block_ms)
        streams = [keys.stream(self.ns, q) for q in queues]
        pipe.command("XREADGROUP", "GROUP", keys.GROUP, consumer, "COUNT", count, *block,
                     "STREAMS", *streams, *(">" for _ in streams))

    def _read(self, pipe: Packed, consumer: str, queues: list[str], count: int,
              block_ms: int | None, replies: int = 1, every: list[str] | None = None
              ) -> list[Delivery]:
        self._read_command(pipe, consumer, queues, count, block_ms)
        try:
            answers = self.transport.run(pipe, blocking=True)[-replies:]
        except BrokerError as exc:
            if exc.code != "NOGROUP":
                raise
            self.recreate_groups(every or queues)
            return []
        out: list[Delivery] = []
        by_stream = {keys.stream(self.ns, q): q for q in every or queues}
        now = time.monotonic()
        for reply in answers:
            # RESP3 (redis-py 8's default) answers a map, RESP2 a list of pairs.
            pairs = reply.items() if isinstance(reply, dict) else reply or ()
            for stream_key, entries in pairs:
                queue = by_stream[as_str(stream_key)]
                for entry_id, fields in entries:
                    out.append(Delivery(queue, as_str(entry_id), entry_message(fields), 1,
                                        now))
        return out

    def _groups_by_slot(self, queues: list[str]) -> list[list[str]]:
        """The queues in groups that one read may cover: all of them on a plain
        server; one group per hash slot on a cluster-mode one."""
        groups = self._slot_groups.get(tuple(queues))
        if groups is None:
            if len(queues) > 1 and self._cluster_mode():
                by_slot: dict[int, list[str]] = {}
                for q in queues:
                    by_slot.setdefault(key_slot(keys.stream(self.ns, q).encode()), []).append(q)
                groups = list(by_slot.values())
            else:
                groups = [list(queues)]
            self._slot_groups[tuple(queues)] = groups
        return groups

    def _cluster_mode(self) -> bool:
        if self.connection.is_cluster:
            return True
        info = self.connection.client.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))


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
