"""Building a canvas (``streamq.api.canvas``) into messages, back to front (each
step's message holds the ones after it), and writing it later things first; and
running one inline in eager mode. It gets the canvas flattened: a chain of
signatures and group headers, each header's members already chains of signatures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ..base.errors import ChainError, ChordError
from ..base.ids import new_task_id
from ..data.message import Message
from . import eager
from .groups import GroupResult
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ
    from .canvas import Signature

OnError = Literal["fail", "collect"]
Item = list[Any]
"""A continuation item (``streamq.worker.continuations`` documents the shapes)."""
Handle = AsyncResult | GroupResult
_SETUP_BATCH = 3000  # creation commands per round trip


class Header:
    """A group inside a chain; followed by a signature, it makes a chord."""

    def __init__(self, members: list[list[Signature[Any]]], on_error: OnError) -> None:
        self.members = members
        self.on_error = on_error


Element: TypeAlias = "Signature[Any] | Header"


class Build:
    """Builds one canvas's messages back to front (a step's message holds the next
    ones), then writes it later things first (see the module docstring)."""

    def __init__(self, app: StreamQ) -> None:
        self.app = app
        self.built: list[tuple[Message, int | None]] = []
        self.chords: list[tuple[Message, int, str]] = []
        self.handles: list[AsyncResult] = []

    def chain(self, elements: Sequence[Element], tail_ok: list[Item], tail_err: list[Item],
              fed: bool = False
              ) -> tuple[list[tuple[Message, Signature[Any]]], list[Item], Handle]:
        """(the entries that start it, X items failing each of its steps, the last
        step's handle). ``tail_ok``/``tail_err``: what follows the chain's last step;
        ``fed``: its first step gets a previous result."""
        ok = tail_ok
        own: list[Item] = []  # X items of this chain's steps after position i
        handles: list[Handle | None] = [None] * len(elements)
        starts: list[tuple[Message, Signature[Any]]] = []
        i = len(elements) - 1
        while i >= 0:
            e = elements[i]
            if isinstance(e, Header):  # a group that ends the chain (no body)
                if i != len(elements) - 1:
                    raise TypeError("a group in a chain must end it or be followed by a task "
                                    "signature (a chord)")
                starts, member_own, gres = self.members(e.members, lambda _i: tail_ok,
                                                        lambda _i: tail_err, fed or i > 0)
                handles[i] = gres
                ok, own = [self._e(m, s) for m, s in starts], member_own + own
                i -= 1
                continue
            header = elements[i - 1] if i > 0 else None
            then: dict[str, Any] = {"ok": ok, "err": own + tail_err}
            if isinstance(header, Header):
                then["chord"] = {"n": len(header.members), "imm": e.immutable}
            msg = self._message(e, then, not e.immutable and (fed or i > 0))
            h = self._handle(msg)
            handles[i] = h
            if not isinstance(header, Header):
                starts, ok, own = [(msg, e)], [self._e(msg, e)], [_x(msg)] + own
                i -= 1
                continue
            if e.options.get("countdown") or e.options.get("eta"):
                raise TypeError(f"{e!r}: a chord's body runs when its last member is done, "
                                f"so it takes no countdown or eta")
            self.chords.append((msg, len(header.members), header.on_error))
            later = own + tail_err if header.on_error == "fail" else []
            starts, member_own, gres = self.members(
                header.members, _contribution(msg, []), _contribution(msg, later),
                fed or i > 1)
            h.parent = handles[i - 1] = gres
            ok, own = [self._e(m, s) for m, s in starts], member_own + [_x(msg)] + own
            i -= 2
        for before, after in zip(handles, handles[1:], strict=False):
            if after is not None and after.parent is None:
                after.parent = before
        last = handles[-1]
        assert last is not None
        return starts, own, last

    def members(self, members: list[list[Signature[Any]]], ok: Callable[[int], list[Item]],
                err: Callable[[int], list[Item]], fed: bool = False
                ) -> tuple[list[tuple[Message, Signature[Any]]], list[Item], GroupResult]:
        starts: list[tuple[Message, Signature[Any]]] = []
        own: list[Item] = []
        handles: list[AsyncResult] = []
        for n, member in enumerate(members):
            s, o, h = self.chain(member, ok(n), err(n), fed)
            starts += s
            own += o
            assert isinstance(h, AsyncResult)
            handles.append(h)
        return starts, own, GroupResult(handles)

    def _message(self, sig: Signature[Any], then: dict[str, Any], fed: bool) -> Message:
        """The step's message. ``fed``: the previous result will be its first argument,
        so ``None`` stands in for it here (checked against the task's signature now;
        the worker puts the result in its place)."""
        o = sig.options
        msg, due = sig.task.prepare((None, *sig.args) if fed else sig.args, sig.kwargs,
                                    countdown=o.get("countdown"),
                                    eta=o.get("eta"), queue=o.get("queue"),
                                    task_id=o.get("task_id"), ignore_result=False)
        if then.get("ok") or then.get("err") or "chord" in then:
            msg = msg._replace(then=then)
        self.built.append((msg, due))
        return msg

    def _handle(self, msg: Message) -> AsyncResult:
        h = AsyncResult(msg.id, self.app, queue=msg.queue)
        self.handles.append(h)
        return h

    @staticmethod
    def _e(msg: Message, sig: Signature[Any]) -> Item:
        countdown = sig.options.get("countdown") or 0
        eta = sig.options.get("eta")
        return ["E", msg.doc(), 0 if sig.immutable else 1, int(countdown * 1000),
                int(eta.timestamp() * 1000) if isinstance(eta, datetime) else 0]

    def send(self, starts: list[tuple[Message, Signature[Any]]]) -> None:
        """Write the canvas: chord states, then later steps' records, then the first
        steps' messages (with their records), each batch after the one before."""
        app, store = self.app, self.app.server.canvas
        first = {m.id for m, _ in starts}
        commands: list[bytes] = []
        for body, n, mode in self.chords:
            sealed = body.encode() if app.signer is None else app.signer.sign(body.encode())
            store.chord_commands(commands, body.queue, body.id, n, mode, sealed)
        for m, _ in self.built:
            if m.id not in first:
                store.pending_commands(commands, m.queue, m.id, m.task, m.enqueued_ms)
        for at in range(0, len(commands), _SETUP_BATCH):
            store.send(commands[at:at + _SETUP_BATCH])
        due = {m.id: d for m, d in self.built}
        app.enqueue([(m, due[m.id]) for m, _ in starts], many=len(starts) > 1)
        sent_at = time.monotonic()
        for h in self.handles:
            h._sent_at = sent_at  # every record exists now: get() may mark and wait at once


def _contribution(body: Message, then: list[Item]) -> Callable[[int], list[Item]]:
    """Member ``n``'s items: contribute to ``body``'s chord, then ``then``."""
    return lambda n: [["C", body.id, body.queue, n], *then]


def _x(msg: Message) -> Item:
    return ["X", msg.id, msg.queue]


class EagerRun:
    """A canvas run inline (``streamq.api.eager``): each step at once, in order, with
    what a worker would pass it; a step after a failed one gets a FAILURE record that
    says why, as on a server."""

    def __init__(self, app: StreamQ) -> None:
        self.app = app

    def chain(self, elements: Sequence[Element], prev: tuple[bool, Any, str] | None
              ) -> tuple[Handle, tuple[bool, Any, str]]:
        handle: Handle | None = None
        i = 0
        while i < len(elements):
            e = elements[i]
            if isinstance(e, Header):
                body = elements[i + 1] if i + 1 < len(elements) else None
                gres, prev = self.group(e, prev)
                gres.parent = handle
                handle = gres
                if body is not None and not isinstance(body, Header):
                    h, prev = self.body(body, gres, e.on_error, prev)
                    h.parent, handle = gres, h
                    i += 1
            else:
                h, prev = self.step(e, prev)
                h.parent, handle = handle, h
            i += 1
        assert handle is not None and prev is not None
        return handle, prev

    def group(self, header: Header, prev: tuple[bool, Any, str] | None
              ) -> tuple[GroupResult, tuple[bool, Any, str]]:
        handles, values, failed = [], [], ""
        for member in header.members:
            h, (ok, value, why) = self.chain(member, prev)
            assert isinstance(h, AsyncResult)
            handles.append(h)
            values.append(value)
            failed = failed or ("" if ok else why)
        return GroupResult(handles), (not failed, values, failed)

    def body(self, sig: Signature[Any], gres: GroupResult, on_error: OnError,
             prev: tuple[bool, Any, str]) -> tuple[AsyncResult, tuple[bool, Any, str]]:
        ok, values, why = prev
        if not ok and on_error == "collect" and all(
                isinstance(v, Exception) or h.successful() for v, h in zip(values, gres,
                                                                         strict=True)):
            prev = (True, values, "")  # every member ran: the body gets their outcomes
        elif not ok:
            return self._failed(sig, ChordError, f"a chord member failed for good, so the "
                                                 f"body never ran: {why}")
        return self.step(sig, prev)

    def step(self, sig: Signature[Any], prev: tuple[bool, Any, str] | None
             ) -> tuple[AsyncResult, tuple[bool, Any, str]]:
        if prev is not None and not prev[0]:
            return self._failed(sig, ChainError, f"a step before it failed for good, so "
                                                 f"this step never ran: {prev[2]}")
        args = sig.args if prev is None or sig.immutable else (prev[1], *sig.args)
        h = eager.run_inline(sig.task, args, sig.kwargs, task_id=sig.options.get("task_id"),
                             queue=sig.options.get("queue"))
        value = h.get(propagate=False)
        ok = h.successful()
        return h, (ok, value, "" if ok else f"step {sig.task.name} ({h.id}): {value}")

    def _failed(self, sig: Signature[Any], cls: type[Exception], text: str
                ) -> tuple[AsyncResult, tuple[bool, Any, str]]:
        queue = sig.options.get("queue") or sig.task.options.queue
        task_id = sig.options.get("task_id") or new_task_id(queue)
        rec = {"status": "FAILURE", "task": sig.task.name, "queue": queue,
               "exc_type": f"{cls.__module__}.{cls.__qualname__}", "exc_message": text}
        return eager.EagerResult(task_id, self.app, rec, queue=queue), (False, None, text)
