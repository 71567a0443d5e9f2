"""Redis Cluster (``redis+cluster://`` URLs): a client for commands, and the router
for streamq's packed hot-path exchanges.

``ClusterClient`` is redis-py's ``RedisCluster`` with streamq's errors; everything
off the hot path (status, dead letters, recovery, registry) goes through it, and
redis-py routes each command and follows MOVED/ASK. The hot path does not: a packed
write or read (``Transport``) is split by the slot of each command, computed here
from the packed bytes (no ``COMMAND GETKEYS`` round trip), and each node gets its
share in one write; every node's write goes out before any reply is read, so the
nodes work side by side. Replies come back in the caller's order.

What the router follows, and why resending is safe in each case:

- ``MOVED``: the slot lives elsewhere now (a finished migration or a failover). The
  command did not run; the slot map is patched and it is sent to the new owner.
- ``ASK``: the slot is being migrated and this key is already on the target. The
  command did not run; it is sent to the target behind ``ASKING``.
- ``TRYAGAIN`` (the keys of one command are split by a migration in progress) and
  ``CLUSTERDOWN`` (no owner for a slot, during a failover): nothing ran; wait a little
  (and re-read the slot map) and send again, for up to ``RETRY_S`` seconds, after
  which the reply is the caller's error (both are transient to the worker).
- A MULTI block whose commands got a redirect is aborted by the server (EXECABORT):
  the whole block is sent again.
- A lost connection: what got no answer is sent again, as on a single server.
- ``NOSCRIPT`` (a node that joined, or restarted empty): the scripts are loaded on
  that node and only those commands are sent again.

A durable write's wait (WAITAOF) follows each node's share on that node's connection,
since it vouches only for its own connection's writes; the weakest answer counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
from hiredis import pack_command
from redis.crc import key_slot

from ..base.clusterurl import split
from ..base.settings import mask_url
from . import scripts
from .translate import translate, translated

RETRY_S = 10.0
"""How long a command is sent again while its slot is moving or has no owner."""

ASKING = pack_command(("ASKING",))
_REDIRECT = (redis.exceptions.AskError, redis.exceptions.TryAgainError,
             redis.exceptions.ClusterDownError)  # MovedError is an AskError
_LOST = (redis.ConnectionError, redis.TimeoutError)
_KEYLESS = frozenset({b"MULTI", b"EXEC", b"PING", b"TIME", b"INFO", b"WAITAOF", b"WAIT",
                      b"SCRIPT", b"CLIENT", b"CONFIG", b"ASKING"})


class ClusterPipeline(redis.cluster.ClusterPipeline):
    """A cluster pipeline whose ``execute`` raises streamq errors (with
    ``raise_on_error=False``, failed replies come back as streamq error values)."""

    streamq_url: str | None = None

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with translated(self.streamq_url):
            replies: list[Any] = super().execute(raise_on_error)
        if raise_on_error:
            return replies
        return [translate(r, self.streamq_url) if isinstance(r, redis.RedisError) else r
                for r in replies]


class ClusterClient(redis.cluster.RedisCluster):
    """redis-py's cluster client, raising streamq errors."""

    streamq_url: str | None = None

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with translated(self.streamq_url):
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        # The same object with streamq's execute: redis-py's own constructor arguments
        # stay redis-py's business.
        pipe.__class__ = ClusterPipeline
        assert isinstance(pipe, ClusterPipeline)
        pipe.streamq_url = self.streamq_url
        return pipe

    def primary(self) -> Any:
        """One primary node (for a command with no key)."""
        return self.get_primaries()[0]  # type: ignore[no-untyped-call]

    def primaries(self) -> list[redis.Redis]:
        """A client of each primary node, as the slot map names them now."""
        return [self.get_redis_connection(n)
                for n in self.get_primaries()]  # type: ignore[no-untyped-call]


def make_cluster_client(url: str, options: dict[str, Any]) -> ClusterClient:
    """A client of the cluster whose seeds ``url`` names; it reads the slot map from
    the first seed that answers (a ``BrokerConnectionError`` when none does)."""
    plain, seeds = split(url, mask_url(url))
    options = {k: v for k, v in options.items() if k != "retry"}  # redis-py's own policy
    with translated(url):
        try:
            client = ClusterClient(
                url=plain, startup_nodes=[
                    redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                    for h, p in seeds[1:]], **options)
        except redis.exceptions.RedisClusterException as exc:
            raise redis.ConnectionError(str(exc)) from exc
    client.streamq_url = url
    return client


def _args(command: bytes, count: int) -> list[bytes]:
    """The first ``count`` arguments (the name first) of a packed command."""
    out: list[bytes] = []
    pos = command.index(b"\r\n") + 2
    size = len(command)
    while len(out) < count and pos < size:
        end = command.index(b"\r\n", pos)
        start = end + 2
        length = int(command[pos + 1:end])
        out.append(command[start:start + length])
        pos = start + length + 2
    return out


def command_slot(command: bytes) -> int | None:
    """The hash slot of a packed command's first key (None: it has no key)."""
    args = _args(command, 4)
    name = args[0].upper()
    if name in (b"EVALSHA", b"EVAL", b"FCALL"):
        return key_slot(args[3]) if len(args) > 3 and int(args[2]) > 0 else None
    if name == b"XREADGROUP":
        args = _args(command, 12)
        upper = [a.upper() for a in args]
        return key_slot(args[upper.index(b"STREAMS") + 1]) if b"STREAMS" in upper else None
    if name in _KEYLESS or len(args) < 2:
        return None
    return key_slot(args[1])


@dataclass
class _Unit:
    """Commands that go to one node together: one command, or a MULTI ... EXEC block."""

    slot: int | None
    indexes: list[int]
    ask: Any = None
    """The node an ASK sent it to, for the next send only."""


def _units(commands: list[bytes], indexes: list[int] | None = None) -> list[_Unit]:
    units: list[_Unit] = []
    block: _Unit | None = None
    for i in indexes if indexes is not None else range(len(commands)):
        command = commands[i]
        if block is not None:
            block.indexes.append(i)
            if block.slot is None:
                block.slot = command_slot(command)
            if command.startswith(b"*1\r\n$4\r\nEXEC"):
                units.append(block)
                block = None
        elif command.startswith(b"*1\r\n$5\r\nMULTI"):
            block = _Unit(None, [i])
        else:
            units.append(_Unit(command_slot(command), [i]))
    if block is not None:
        units.append(block)
    return units


@dataclass
class _Round:
    """What one exchange with the nodes left to do."""

    again: list[_Unit] = field(default_factory=list)
    noscript: dict[Any, list[int]] = field(default_factory=dict)
    refresh: bool = False
    pause: float = 0.0
    error: BaseException | None = None


class Router:
    """Sends packed commands to the nodes owning their slots (see the module doc)."""

    def __init__(self, client: ClusterClient) -> None:
        self.client = client

    def run(self, commands: list[bytes], wait: bytes | None = None
            ) -> tuple[list[Any], Any]:
        """Every command's reply (errors as values), in order, and the weakest wait
        reply (None without ``wait``)."""
        replies: list[Any] = [None] * len(commands)
        waits: list[Any] = []
        todo = _units(commands)
        deadline = time.monotonic() + RETRY_S
        while todo:
            done = self._round(commands, todo, replies, wait, waits)
            for node, indexes in done.noscript.items():
                scripts.load(self.client.get_redis_connection(node))
                done.again += _units(commands, indexes)
            if not done.again:
                break
            if time.monotonic() > deadline:
                if done.error is not None:
                    raise done.error
                break  # the redirect replies stand as the commands' errors
            if done.pause:
                time.sleep(done.pause)
            if done.refresh:
                self.client.nodes_manager.initialize()
            todo = done.again
        return replies, weakest(waits) if wait is not None else None

    def _round(self, commands: list[bytes], todo: list[_Unit], replies: list[Any],
               wait: bytes | None, waits: list[Any]) -> _Round:
        plan: dict[str, tuple[Any, list[_Unit]]] = {}
        done = _Round()
        for unit in todo:
            try:
                node = unit.ask or (self.client.primary() if unit.slot is None
                                    else self.client.nodes_manager.get_node_from_slot(unit.slot))
            except redis.exceptions.SlotNotCoveredError as exc:
                done.again.append(unit)
                done.refresh, done.pause, done.error = True, 0.25, exc
                continue
            plan.setdefault(node.name, (node, []))[1].append(unit)
        sent = []
        for node, units in plan.values():
            pool = self.client.get_redis_connection(node).connection_pool
            try:
                conn = pool.get_connection()
            except _LOST as exc:  # the node is down (a failover?): the map may know
                done.again += units
                done.refresh, done.pause, done.error = True, max(done.pause, 0.1), exc
                continue
            payload: list[bytes] = []
            for unit in units:
                for i in unit.indexes:
                    if unit.ask is not None:
                        payload.append(ASKING)
                    payload.append(commands[i])
            if wait is not None:
                payload.append(wait)
            try:
                conn.send_packed_command([b"".join(payload)],  # type: ignore[no-untyped-call]
                                         check_health=False)
            except _LOST as exc:
                self._lost(pool, conn, units, done, exc)
                continue
            sent.append((node, pool, conn, units))
        for node, pool, conn, units in sent:
            self._read(node, pool, conn, units, replies, wait, waits, done)
        return done

    def _read(self, node: Any, pool: Any, conn: Any, units: list[_Unit], replies: list[Any],
              wait: bytes | None, waits: list[Any], done: _Round) -> None:
        settled = 0
        try:
            for unit in units:
                got = []
                for _ in unit.indexes:
                    if unit.ask is not None:
                        _reply(conn)  # ASKING's OK
                    got.append(_reply(conn))
                self._settle(node, unit, got, replies, done)
                settled += 1
            if wait is not None:
                waits.append(_reply(conn))
        except _LOST as exc:
            # What got no answer is sent again, with a wait behind it; a wait whose
            # reply alone was lost confirms nothing.
            if settled == len(units):
                waits.append(exc)
            self._lost(pool, conn, units[settled:], done, exc)
            return
        pool.release(conn)

    def _settle(self, node: Any, unit: _Unit, got: list[Any], replies: list[Any],
                done: _Round) -> None:
        redirect = next((r for r in got if isinstance(r, _REDIRECT)), None)
        unit.ask = None
        if redirect is not None:
            done.again.append(unit)
            done.error = redirect
            if isinstance(redirect, redis.exceptions.MovedError):
                try:
                    self.client.nodes_manager.move_slot(redirect)
                except Exception:
                    done.refresh = True
            elif isinstance(redirect, redis.exceptions.AskError) and len(unit.indexes) > 1:
                # A MULTI block cannot follow an ASK (ASKING inside it is queued, not
                # run): wait for the migration of the slot to finish, then MOVED.
                done.pause = max(done.pause, 0.05)
            elif isinstance(redirect, redis.exceptions.AskError):
                target = self.client.nodes_manager.get_node(*redirect.node_addr)
                if target is None:
                    done.refresh = True
                unit.ask = target
            elif isinstance(redirect, redis.exceptions.TryAgainError):
                done.pause = max(done.pause, 0.05)
            else:  # CLUSTERDOWN
                done.refresh, done.pause = True, 0.25
            for i, r in zip(unit.indexes, got, strict=True):
                replies[i] = r  # what stands if the retries run out
            return
        for i, r in zip(unit.indexes, got, strict=True):
            if isinstance(r, redis.exceptions.NoScriptError):
                done.noscript.setdefault(node, []).append(i)
            replies[i] = r

    def _lost(self, pool: Any, conn: Any, units: list[_Unit], done: _Round,
              exc: BaseException) -> None:
        conn.disconnect()
        pool.release(conn)
        done.again += units
        done.refresh, done.pause, done.error = True, max(done.pause, 0.1), exc


def _reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


def weakest(waits: list[Any]) -> Any:
    """Of the nodes' WAITAOF/WAIT replies, an error if any, else the smallest counts."""
    for w in waits:
        if isinstance(w, Exception) or not isinstance(w, list | int):
            return w
    if waits and all(isinstance(w, list) for w in waits):
        return [min(int(w[i]) for w in waits) for i in range(len(waits[0]))]
    return min(int(w) for w in waits) if waits else None
