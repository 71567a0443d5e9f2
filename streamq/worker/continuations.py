"""Canvas steps in the worker: what a step's outcome forwards, and a chord body's
arguments.

A canvas message carries its continuation (``Message.then``, built by
``streamq.api.canvas``)::

    {"ok":  [item, ...],     taken when the step succeeds
     "err": [item, ...],     taken when it fails for good (retries exhausted, dead)
     "chord": {"n": n, "imm": bool}}     only on a chord body (not imm: the results
                                         replace its first argument, a stand-in)

    item: ["E", envelope, fed, countdown_ms, eta_ms]   enqueue the next step (fed:
                                                      the result replaces its first
                                                      argument, a stand-in)
          ["C", body id, body queue, member index]        contribute to a chord
          ["X", task id, queue]                           fail a later step

Each item becomes a ``Forward`` on the outcome: the writer puts it in the outbox in
the step that acknowledges the outcome and sends it right behind (``writer.py``).
Building them is the only work canvas adds, and only to canvas messages: a plain
task's outcome is untouched.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from ..base import keys
from ..base.errors import ChainError, remote_failure
from ..base.settings import Settings
from ..data import record, serialization
from ..data.message import Message, now_ms
from ..data.outcome import Dead, Failed, Forward, Outcome, Succeeded
from ..data.signing import Signer
from ..server.canvas import CanvasStore
from ..server.transport import Packed
from ..server.writer import OutcomeWriter
from .executor import Call

log = logging.getLogger(__name__)

CHAIN_ERROR = f"{ChainError.__module__}.{ChainError.__qualname__}"
CRASH_HOOK = "STREAMQ_TEST_CRASH_AFTER_OUTCOME"
"""Tests only: set to 1, a worker process writes a canvas step's outcome (and its
outbox) without its forwards and SIGKILLs itself right after: the crash the outbox
sweep exists for."""


class Continuations:
    """Forwards of one consumer's canvas steps (``ns``, TTLs, serializer, signer)."""

    def __init__(self, settings: Settings, store: CanvasStore, accept: set[str],
                 signer: Signer | None, consumer: str) -> None:
        self.consumer = consumer
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self.done_ttl_s = min(settings.result_ttl, record.DONE_TTL_S)
        self.serializer = settings.serializer
        self.store = store
        self.accept = accept
        self.signer = signer
        self.crash_after_outcome = os.environ.get(CRASH_HOOK) == "1"

    # -- before a step runs -------------------------------------------------------------
    def prepared(self, call: Call) -> Call | Outcome:
        """A chord body's call with its members' results first (unless immutable),
        read from the chord state: the one extra round trip canvas costs, for bodies
        only."""
        then = call.message.then or {}
        chord = then.get("chord")
        if not isinstance(chord, dict):
            return call
        msg = call.message
        n = int(chord.get("n", 0))
        got = self.store.chord_results(msg.queue, msg.id)
        if len(got) < n:
            # Dead, and what follows the body is failed as after any dead step.
            why = (f"chord body without its members' results ({len(got)} of {n} found): "
                   f"its chord state expired (result_ttl) or was deleted")
            fields = record.dead(reason=why, task=msg.task, deliveries=call.delivery.deliveries,
                                 dead_at_ms=now_ms(), worker=self.consumer)
            return self.finished(msg, Dead(call.delivery, msg.id, msg.task, msg.retries, why,
                                           fields))
        if chord.get("imm"):
            return call
        values = [self._contribution(got[i]) for i in range(n)]
        return call._replace(args=[values, *call.args[1:]])  # in place of its stand-in

    def _contribution(self, raw: bytes) -> Any:
        if raw[:1] == b"S":
            ct, ce, value = raw[1:].split(b"\n", 2)
            return serialization.loads(value, ct.decode(), ce.decode(), accept=self.accept)
        task_id, exc_type, message = raw[1:].decode("utf-8", "replace").split("\n", 2)
        return remote_failure(task_id, exc_type, message)

    # -- after it ran -------------------------------------------------------------------
    def finished(self, msg: Message, outcome: Outcome) -> Outcome:
        """``outcome`` with the forwards its continuation asks for (a retry: none yet).
        A continuation that cannot be followed (not streamq's shape) is logged and
        dropped: the step itself keeps its outcome."""
        if not isinstance(outcome, Succeeded | Failed | Dead) or msg.then is None:
            return outcome
        try:
            if isinstance(outcome, Succeeded):
                forward = self._on_success(msg, outcome)
            else:
                forward = self._on_failure(msg, outcome)
        except Exception as exc:
            log.error("Task %s (%s): its canvas continuation cannot be followed, so the "
                      "steps after it will not run: %s: %s", msg.id, msg.task,
                      type(exc).__name__, exc)
            return outcome
        return outcome._replace(forward=tuple(forward)) if forward else outcome

    def _on_success(self, msg: Message, o: Succeeded) -> list[Forward]:
        out: list[Forward] = []
        value: list[Any] = []  # decoded once, for the first step that needs it
        for n, item in enumerate(_items(msg.then, "ok")):
            kind = item[0]
            name = f"{msg.id}#{n}"
            if kind == "E":
                if item[2] and not value:
                    value.append(serialization.loads(o.result, o.content_type,
                                                     o.content_encoding, accept=self.accept))
                out.append(self._enqueue(name, item, value[0] if item[2] else None,
                                         bool(item[2])))
            elif kind == "C":
                ce = o.content_encoding
                payload = b"S" + o.content_type.encode() + b"\n" + ce.encode() + b"\n" + (
                    o.result if isinstance(o.result, bytes) else o.result.encode())
                out.append(self._contribute(name, item, payload, None))
        return out

    def _on_failure(self, msg: Message, o: Failed | Dead) -> list[Forward]:
        if isinstance(o, Failed):
            exc_type, _, exc_message = o.error.partition(": ")
        else:
            exc_type, exc_message = "DeadLetter", o.reason
        error = f"{exc_type}: {exc_message}".split("\n", 1)[0][:500]
        out: list[Forward] = []
        for n, item in enumerate(_items(msg.then, "err")):
            name = f"{msg.id}#{n}"
            if item[0] == "X":
                task_id, queue = str(item[1]), str(item[2])
                out.append(Forward(name, "forward", [keys.record(self.ns, queue, task_id),
                                                     keys.done(self.ns, queue, task_id)],
                                   ["X", self.ttl_s, self.done_ttl_s, CHAIN_ERROR,
                                    f"step {msg.task} ({msg.id}) failed for good, so this "
                                    f"step never ran: {error}", now_ms()]))
            elif item[0] == "C":
                payload = f"F{msg.id}\n{exc_type}\n{exc_message}".encode()
                out.append(self._contribute(
                    name, item, payload,
                    f"chord member {item[3]} ({msg.task}, {msg.id}) failed for good, so "
                    f"the body never ran: {error}"))
        return out

    def _enqueue(self, name: str, item: list[Any], value: Any, prepend: bool) -> Forward:
        nxt = Message.from_doc(item[1])
        if prepend:
            args, kwargs = serialization.loads(nxt.body, nxt.content_type,
                                               nxt.content_encoding, accept=self.accept)
            # In place of the stand-in the canvas put first (``canvas_build.Build._message``).
            ct, ce, body = serialization.dumps([[value, *args[1:]], kwargs], self.serializer,
                                               "the arguments", nxt.task)
            nxt = nxt._replace(content_type=ct, content_encoding=ce, body=body)
        nxt = nxt._replace(enqueued_ms=now_ms())
        countdown_ms, eta_ms = int(item[3] or 0), int(item[4] or 0)
        if eta_ms:
            countdown_ms = max(1, eta_ms - now_ms())
        encoded = nxt.encode()
        sealed = encoded if self.signer is None else self.signer.sign(encoded)
        q, tid = nxt.queue, nxt.id
        return Forward(name, "forward",
                       [keys.record(self.ns, q, tid), keys.done(self.ns, q, tid),
                        keys.stream(self.ns, q), keys.delayed(self.ns, q),
                        keys.delayed_messages(self.ns, q)],
                       ["E", self.ttl_s, self.done_ttl_s, tid, sealed, countdown_ms, nxt.task,
                        q])

    def _contribute(self, name: str, item: list[Any], payload: bytes, error: str | None
                    ) -> Forward:
        body_id, q, index = str(item[1]), str(item[2]), int(item[3])
        return Forward(name, "chord",
                       [keys.chord(self.ns, q, body_id), keys.chord_results(self.ns, q, body_id),
                        keys.record(self.ns, q, body_id), keys.done(self.ns, q, body_id),
                        keys.stream(self.ns, q)],
                       [index, payload, "1" if error is not None else "0", error or "",
                        self.ttl_s, self.done_ttl_s, now_ms()])

    # -- after the write ----------------------------------------------------------------
    def written(self, writer: OutcomeWriter, pipe: Packed, outcomes: list[Outcome]) -> None:
        """``pipe`` (the write of ``outcomes``) ran: its confirmed forwards can leave
        the outbox. With the test hook, a process that wrote forwards dies here."""
        writer.confirm(pipe)
        if self.crash_after_outcome and any(getattr(o, "forward", ()) for o in outcomes):
            os.kill(os.getpid(), signal.SIGKILL)


def _items(then: Any, which: str) -> list[list[Any]]:
    items = then.get(which) or []
    if not isinstance(items, list) or not all(isinstance(i, list) and i for i in items):
        raise TypeError(f"then.{which} is not a list of items")
    return items
