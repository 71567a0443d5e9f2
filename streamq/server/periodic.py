"""The server side of periodic schedules: each schedule's state (``keys.periodic``, on
its queue's slot, with the calls it enqueues), the index of every schedule
(``keys.periodic_index``), and the script that fires a tick at most once
(``periodic.lua``).

State fields: ``version`` and ``spec`` (the definition in force), ``next`` (the
next tick to handle; every earlier one was fired or skipped), ``since`` (when that
definition was installed), ``seen`` (when a worker of it last touched the state),
``last_tick``, ``last_id`` and ``last_at`` (the last call: its tick, task id and when
the server enqueued it), ``fired``, ``skipped``, ``last_skip_tick`` and
``last_skip`` (``missed`` or ``running``). Every time is the server's, in ms.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from ..base import keys
from .broker import as_str
from .transport import Packed, Transport, pack

RETIRE_AFTER_S = 86400
"""A schedule no worker touched for this long is forgotten (its state expires)."""

TAKEOVER_AFTER_MS = 60_000
"""Another definition of a schedule (a worker running other code) replaces the one in
force only once no worker of that one touched it for this long."""


class Step(NamedTuple):
    """What one worker asks of one schedule: touch it, or fire ``tick``."""

    name: str
    queue: str
    version: str
    spec: dict[str, Any]
    first_ms: int
    """Its first tick, if this definition is installed now."""
    expected_ms: int | None = None
    """The next tick as the worker knows it (None: only touch)."""
    tick_ms: int = 0
    after_ms: int = 0
    grace_ms: int | None = None
    skip_if_running: bool = False
    last_id: str = ""
    task_id: str = ""
    encoded: bytes | str = ""
    record: list[Any] | None = None
    """The call's record fields (None: no record, ``ignore_result``)."""
    record_ttl_s: int = 0


class Answer(NamedTuple):
    """The server's reply to a ``Step``."""

    outcome: str
    """``fired``, ``skipped:missed``, ``skipped:running``, ``state`` (nothing done: the
    worker's view was behind, or the tick not due), ``installed``, ``stale`` (the
    first tick given had passed), ``other`` (another definition is in force),
    ``released``."""
    now_ms: int
    next_ms: int | None
    last_tick_ms: int | None
    last_id: str


class PeriodicStore:
    def __init__(self, transport: Transport, namespace: str) -> None:
        self.transport = transport
        self.ns = namespace

    def server_ms(self) -> int:
        """The server's clock (TIME), in ms."""
        seconds, micros = self.transport.run(Packed([pack("TIME")]))[0]
        return int(seconds) * 1000 + int(micros) // 1000

    def pack(self, packed: Packed, step: Step, *, release: bool = False) -> None:
        ns, q = self.ns, step.queue
        state = keys.periodic(ns, q, step.name)
        last = keys.record(ns, q, step.last_id) if step.last_id else state
        new = keys.record(ns, q, step.task_id) if step.task_id else state
        mode = "release" if release else "" if step.expected_ms is None else step.expected_ms
        packed.script("periodic", [state, keys.stream(ns, q), new, last], [
            step.version, json.dumps(step.spec, sort_keys=True), RETIRE_AFTER_S,
            TAKEOVER_AFTER_MS, step.first_ms, mode, step.tick_ms, step.after_ms,
            "" if step.grace_ms is None else step.grace_ms, int(step.skip_if_running),
            step.last_id, step.task_id, step.encoded,
            0 if step.record is None else step.record_ttl_s, *(step.record or ())])

    def note(self, packed: Packed, names: dict[str, str]) -> None:
        """Index the schedules ``names`` (name -> queue) and their queues."""
        if names:
            packed.command("HSET", keys.periodic_index(self.ns),
                           *(x for item in names.items() for x in item))
            packed.command("SADD", keys.queues(self.ns), *set(names.values()))

    def run(self, packed: Packed) -> list[Any]:
        return self.transport.run(packed)

    @staticmethod
    def answer(reply: Any) -> Answer:
        outcome, now, nxt, last_tick, last_id = reply
        return Answer(as_str(outcome), int(now), None if int(nxt) < 0 else int(nxt),
                      None if int(last_tick) < 0 else int(last_tick), as_str(last_id))

    # -- reading, for streamq periodic -------------------------------------------------
    def known(self) -> dict[str, dict[str, Any]]:
        """Every schedule the server knows, by name: its queue and stored state (the
        index entry of one whose state expired is dropped)."""
        client = self.transport.connection.client
        index = {as_str(k): as_str(v) for k, v in
                 client.hgetall(keys.periodic_index(self.ns)).items()}
        if not index:
            return {}
        pipe = Packed()
        for name, queue in index.items():
            pipe.command("HGETALL", keys.periodic(self.ns, queue, name))
        found: dict[str, dict[str, Any]] = {}
        gone: list[str] = []
        for (name, queue), raw in zip(index.items(), self.transport.run(pipe), strict=True):
            state = _decode(raw)
            if not state:
                gone.append(name)
                continue
            found[name] = {"queue": queue, **state}
        if gone:
            client.hdel(keys.periodic_index(self.ns), *gone)
        return found

    def forget(self, name: str) -> bool:
        """Remove a schedule's state and index entry now; False when unknown."""
        client = self.transport.connection.client
        queue = client.hget(keys.periodic_index(self.ns), name)
        if queue is None:
            return False
        pipe = Packed()
        pipe.command("DEL", keys.periodic(self.ns, as_str(queue), name))
        pipe.command("HDEL", keys.periodic_index(self.ns), name)
        self.transport.run(pipe)
        return True


_INT = frozenset({"next", "since", "seen", "last_tick", "last_at", "fired", "skipped",
                  "last_skip_tick"})


def _decode(raw: Any) -> dict[str, Any]:
    if isinstance(raw, list):  # RESP2 through the packed path: a flat list
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    state: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        name, text = as_str(k), as_str(v)
        if name in _INT:
            state[name] = int(text) if text.lstrip("-").isdigit() else None
        elif name == "spec":
            try:
                state[name] = json.loads(text)
            except ValueError:
                state[name] = {}
        else:
            state[name] = text
    return state
