"""Canvas: signatures, chains, groups and chords (Celery's spelling).

``add.s(2, 3)`` is a call not made yet; ``a.s(1) | b.s() | c.s()`` (``chain``) runs
each step when the one before it succeeded, with that result prepended to its
arguments (``.si()``: immutable, it takes none); ``group(...)`` runs its members at
once; ``chord(group, body)`` (``group | body``) runs the body once, with the members'
results in member order, after all of them succeeded.

Crash-safe by construction. Every step's id is chosen here, and what comes after a
step travels in its message (``Message.then``): the worker that finishes it writes
the forwards to the next steps into an outbox in the same atomic step that
acknowledges it, then sends them; each forward is idempotent (``forward.lua``,
``chord.lua``). Creation writes later things first (every chord's state, every later
step's PENDING record), the first steps' messages last, so a creation cut short runs
nothing; all of it expires after ``result_ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from ..base.errors import ChainError, ChordError
from ..base.ids import new_task_id
from ..data.message import Message
from . import eager
from .groups import GroupResult
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ
    from .task import Task

__all__ = ["Chain", "Chord", "Group", "Signature", "chain", "chord", "group"]

R = TypeVar("R")
OnError = Literal["fail", "collect"]
_OPTIONS = frozenset({"countdown", "eta", "queue", "task_id"})
_BATCH = 1000
"""Members built and enqueued at a time: a group from a generator is never all in
memory as messages."""

Item = list[Any]
"""A continuation item (``streamq.worker.continuations`` documents the shapes)."""
Handle = AsyncResult | GroupResult


class Signature(Generic[R]):
    """One call of a task, not made yet: ``task.s(...)`` or ``task.si(...)``."""

    def __init__(self, task: Task[Any, R], args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                 immutable: bool = False) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        """A chain does not prepend the previous result (``.si()``)."""

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task.name}.{'si' if self.immutable else 's'}({', '.join(parts)})"

    def set(self, **options: Any) -> Signature[R]:
        """A copy with enqueue options: ``queue``, ``countdown``, ``eta``, ``task_id``."""
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown signature option(s): {', '.join(sorted(unknown))}; "
                            f"a signature takes {', '.join(sorted(_OPTIONS))}")
        return Signature(self.task, self.args, self.kwargs, {**self.options, **options},
                         self.immutable)

    def clone(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
              ) -> Signature[R]:
        """A copy with ``args`` appended and ``kwargs`` merged (an immutable one's
        arguments stay as they are)."""
        if self.immutable:
            return self
        return Signature(self.task, self.args + tuple(args), {**self.kwargs, **(kwargs or {})},
                         self.options)

    def delay(self) -> AsyncResult:
        return self.apply_async()

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult:
        """Enqueue the call (``args`` appended, ``kwargs`` merged, ``options`` as
        ``set``); returns its handle."""
        sig = self.clone(args, kwargs).set(**options) if args or kwargs or options else self
        app = _app(sig)
        if eager.is_eager(app):
            return eager.run_inline(sig.task, sig.args, sig.kwargs,
                                    task_id=sig.options.get("task_id"),
                                    queue=sig.options.get("queue"))
        return sig.task.apply_async(sig.args, sig.kwargs, **sig.options)

    def __or__(self, other: Canvas) -> Chain:
        return Chain(self, other)


class Chain:
    """Steps run one after another (see the module docstring)."""

    def __init__(self, *steps: Canvas) -> None:
        if not steps:
            raise TypeError("chain() needs at least one step")
        self.steps = steps

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.steps)

    def __or__(self, other: Canvas) -> Chain:
        return Chain(*self.steps, other)

    def delay(self) -> Handle:
        return self.apply_async()

    def apply_async(self) -> Handle:
        """Create the chain; returns the last step's handle (a ``GroupResult`` when a
        group ends it), whose ``.parent`` walks back to the first step's."""
        elements = _elements(self)
        app = _first_app(elements)
        if eager.is_eager(app):
            return _Eager(app).chain(elements, None)[0]
        build = _Build(app)
        starts, _, handle = build.chain(elements, [], [])
        build.send(starts)
        return handle


class Group:
    """Members run at once; ``members`` may be a generator (consumed in batches)."""

    def __init__(self, members: Iterable[Signature[Any] | Chain]) -> None:
        self.members = members

    def __repr__(self) -> str:
        return f"group({self.members!r})"

    def __or__(self, body: Signature[Any] | Chain) -> Chord:
        return Chord(self, body)

    def delay(self) -> GroupResult:
        return self.apply_async()

    def apply_async(self) -> GroupResult:
        """Enqueue every member, ``_BATCH`` at a time; returns the ``GroupResult``."""
        members = iter(self.members)
        first = list(islice(members, _BATCH))
        if not first:
            return GroupResult([])
        app = _app(_member_steps(first[0])[0])
        if eager.is_eager(app):
            return _Eager(app).group(_Header([*first, *members], "fail"), None)[0]
        results: list[AsyncResult] = []
        batch = first
        while batch:
            build = _Build(app)
            starts, _, part = build.members(batch, lambda _i: [], lambda _i: [])
            build.send(starts)
            results += part.results
            batch = list(islice(members, _BATCH))
        return GroupResult(results)


class Chord:
    """A group, then ``body`` once with the members' results in member order.

    ``on_error="fail"`` (the default): a member that fails for good fails the chord at
    once; the body never runs and its record is ``FAILURE`` with a ``ChordError``
    naming the member. ``on_error="collect"``: the body runs once every member is
    done, with each member's value or, for a member that failed, its ``TaskFailed``
    (as ``asyncio.gather(return_exceptions=True)`` returns them)."""

    def __init__(self, header: Group | Iterable[Signature[Any] | Chain],
                 body: Signature[Any] | Chain, *, on_error: OnError = "fail") -> None:
        if on_error not in ("fail", "collect"):
            raise ValueError(f"on_error must be 'fail' or 'collect', got {on_error!r}")
        self.header = header if isinstance(header, Group) else Group(header)
        self.body = body
        self.on_error: OnError = on_error

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __or__(self, other: Canvas) -> Chain:
        return Chain(self, other)

    def delay(self) -> AsyncResult:
        return self.apply_async()

    def apply_async(self) -> AsyncResult:
        """Create the chord; returns the body's handle, whose ``.parent`` is the
        ``GroupResult`` of the members."""
        handle = Chain(self).apply_async()
        assert isinstance(handle, AsyncResult)
        return handle


Canvas = Signature[Any] | Chain | Group | Chord


def chain(*steps: Canvas) -> Chain:
    """``chain(a.s(1), b.s(), c.s())``: the same as ``a.s(1) | b.s() | c.s()``."""
    return Chain(*steps)


def group(*members: Any) -> Group:
    """``group(a.s(1), b.s(2))`` or ``group(add.s(i, i) for i in range(n))``."""
    if len(members) == 1 and not isinstance(members[0], Signature | Chain):
        return Group(members[0])
    return Group(members)


def chord(header: Group | Iterable[Signature[Any] | Chain], body: Signature[Any] | Chain,
          *, on_error: OnError = "fail") -> Chord:
    """``chord(group(...), body)``: see ``Chord``."""
    return Chord(header, body, on_error=on_error)


# -- flattening --------------------------------------------------------------------------
class _Header:
    """A group inside a chain; followed by a signature, it makes a chord."""

    def __init__(self, members: list[Signature[Any] | Chain], on_error: OnError) -> None:
        self.members = members
        self.on_error = on_error


Element = Signature[Any] | _Header


def _elements(node: Canvas) -> list[Element]:
    """A canvas as a flat chain of signatures and group headers."""
    if isinstance(node, Signature):
        return [node]
    if isinstance(node, Chain):
        out: list[Element] = []
        for step in node.steps:
            out += _elements(step)
    elif isinstance(node, Group):
        out = [_Header(list(node.members), "fail")]
    elif isinstance(node, Chord):
        out = [_Header(list(node.header.members), node.on_error), *_elements(node.body)]
        if not isinstance(out[1], Signature):
            raise TypeError("a chord's body must be a task signature or a chain starting "
                            "with one")
    else:
        raise TypeError(f"not a canvas: {node!r} (use task.s(...), chain, group or chord)")
    for before, after in zip(out, out[1:], strict=False):
        if isinstance(before, _Header) and isinstance(after, _Header):
            raise TypeError("a group cannot follow a group in a chain: put a task between "
                            "them (that makes the first a chord)")
    return out


def _member_steps(member: Any) -> list[Signature[Any]]:
    steps = _elements(member)
    if not all(isinstance(s, Signature) for s in steps):
        raise TypeError(f"a group member must be a task signature or a chain of them, got "
                        f"{member!r}")
    return cast(list[Signature[Any]], steps)


def _app(sig: Signature[Any]) -> StreamQ:
    return cast("StreamQ", sig.task.app)


def _first_app(elements: list[Element]) -> StreamQ:
    first = elements[0]
    return _app(first if isinstance(first, Signature) else _member_steps(first.members[0])[0])


# -- building ------------------------------------------------------------------------------
class _Build:
    """Builds one canvas's messages back to front (a step's message holds the next
    ones), then writes it later things first (see the module docstring)."""

    def __init__(self, app: StreamQ) -> None:
        self.app = app
        self.built: list[tuple[Message, int | None]] = []
        self.chords: list[tuple[Message, int, str]] = []
        self.handles: list[AsyncResult] = []

    def chain(self, elements: list[Element], tail_ok: list[Item], tail_err: list[Item],
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
            if isinstance(e, _Header):  # a group that ends the chain (no body)
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
            if isinstance(header, _Header):
                then["chord"] = {"n": len(header.members), "imm": e.immutable}
            msg = self._message(e, then, not e.immutable and (fed or i > 0))
            h = self._handle(msg)
            handles[i] = h
            if not isinstance(header, _Header):
                starts, ok, own = [(msg, e)], [self._e(msg, e)], [_x(msg)] + own
                i -= 1
                continue
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

    def members(self, members: Iterable[Any], ok: Callable[[int], list[Item]],
                err: Callable[[int], list[Item]], fed: bool = False
                ) -> tuple[list[tuple[Message, Signature[Any]]], list[Item], GroupResult]:
        starts: list[tuple[Message, Signature[Any]]] = []
        own: list[Item] = []
        handles: list[AsyncResult] = []
        for n, member in enumerate(members):
            s, o, h = self.chain(list(_member_steps(member)), ok(n), err(n), fed)
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
        for at in range(0, len(commands), 3 * _BATCH):
            store.send(commands[at:at + 3 * _BATCH])
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


# -- eager mode ----------------------------------------------------------------------------
class _Eager:
    """A canvas run inline (``streamq.api.eager``): each step at once, in order, with
    what a worker would pass it; a step after a failed one gets a FAILURE record that
    says why, as on a server."""

    def __init__(self, app: StreamQ) -> None:
        self.app = app

    def chain(self, elements: list[Element], prev: tuple[bool, Any, str] | None
              ) -> tuple[Handle, tuple[bool, Any, str]]:
        handle: Handle | None = None
        i = 0
        while i < len(elements):
            e = elements[i]
            if isinstance(e, _Header):
                body = elements[i + 1] if i + 1 < len(elements) else None
                gres, prev = self.group(e, prev)
                gres.parent = handle
                handle = gres
                if isinstance(body, Signature):
                    h, prev = self.body(body, gres, e.on_error, prev)
                    h.parent, handle = gres, h
                    i += 1
            else:
                h, prev = self.step(e, prev)
                h.parent, handle = handle, h
            i += 1
        assert handle is not None and prev is not None
        return handle, prev

    def group(self, header: _Header, prev: tuple[bool, Any, str] | None
              ) -> tuple[GroupResult, tuple[bool, Any, str]]:
        handles, values, failed = [], [], ""
        for member in header.members:
            h, (ok, value, why) = self.chain(list(_member_steps(member)), prev)
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
