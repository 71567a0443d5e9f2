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

from collections.abc import Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import eager
from .canvas_build import Build, EagerRun, Element, Handle, Header, OnError
from .groups import GroupResult
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ
    from .task import Task

__all__ = ["Chain", "Chord", "Group", "Signature", "chain", "chord", "group"]

R = TypeVar("R")
_OPTIONS = frozenset({"countdown", "eta", "queue", "task_id"})
_BATCH = 1000
"""Members built and enqueued at a time: a group from a generator is never all in
memory as messages."""


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
            return EagerRun(app).chain(elements, None)[0]
        build = Build(app)
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
            every = [_member_steps(m) for m in (*first, *members)]
            return EagerRun(app).group(Header(every, "fail"), None)[0]
        results: list[AsyncResult] = []
        batch = first
        while batch:
            build = Build(app)
            starts, _, part = build.members([_member_steps(m) for m in batch],
                                            lambda _i: [], lambda _i: [])
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


def _elements(node: Canvas) -> list[Element]:
    """A canvas as a flat chain of signatures and group headers."""
    if isinstance(node, Signature):
        return [node]
    if isinstance(node, Chain):
        out: list[Element] = []
        for step in node.steps:
            out += _elements(step)
    elif isinstance(node, Group):
        out = [Header([_member_steps(m) for m in node.members], "fail")]
    elif isinstance(node, Chord):
        out = [Header([_member_steps(m) for m in node.header.members], node.on_error),
               *_elements(node.body)]
        if not isinstance(out[1], Signature):
            raise TypeError("a chord's body must be a task signature or a chain starting "
                            "with one")
    else:
        raise TypeError(f"not a canvas: {node!r} (use task.s(...), chain, group or chord)")
    if any(isinstance(e, Header) and not e.members for e in out):
        raise ValueError("a group in a chain or chord needs at least one member (a chord's "
                         "body runs when the last member is done)")
    for before, after in zip(out, out[1:], strict=False):
        if isinstance(before, Header) and isinstance(after, Header):
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
    return _app(first if isinstance(first, Signature) else first.members[0][0])


