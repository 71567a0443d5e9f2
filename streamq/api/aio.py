"""The asyncio producer: ``enqueue`` for ``Task.adelay``/``aapply_async``/``amap``.

Naming: every coroutine is its blocking twin's name with an ``a`` in front
(``adelay``, ``aapply_async``, ``amap``, ``AsyncResult.aget``, ``astatus``,
``StreamQ.aclose``), takes the same arguments, does the same checks with the same
messages and writes the same records. The commands are the ones ``StreamQ.enqueue``
packs (``_call_commands``, ``_batches``); only the sending differs: the running
loop's ``AsyncLink`` joins the calls of one loop turn into one write
(auto-pipelining), so many concurrent ``adelay()`` calls share round trips.

Durable enqueue is refused here, before anything is sent: its wait (WAITAOF) vouches
only for the writes before it on its own connection, and the batcher's writes carry
other callers' calls.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Coroutine, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from ..base.errors import BrokerError, ConfigurationError
from ..base.ids import new_task_id, queue_of
from ..data.message import Message, now_ms
from . import eager
from .limits import BATCH, DEFAULT_VALUE_LIMIT
from .partial import partly_enqueued
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ


async def aenqueue(app: StreamQ, prepared: Sequence[tuple[Message, int | None]], *,
                   many: bool = False, durable: bool | None = None) -> list[AsyncResult]:
    """``StreamQ.enqueue`` on the running event loop (see the module docstring)."""
    settings = app.settings
    if settings.durable if durable is None else durable:
        raise ConfigurationError(
            "durable enqueue is not available from asyncio (adelay, aapply_async, amap); "
            "nothing was sent. Pass durable=False to aapply_async, or enqueue durably "
            "with delay()/apply_async() (e.g. in asyncio.to_thread)")
    if settings.eager:  # run here and now, without a server (streamq.api.eager)
        return await eager.aenqueue(app, prepared)
    link = app.aio.current()
    if len(prepared) == 1 and not many:
        message, due = prepared[0]
        commands = _packed(app, link, message, due)
        if commands is None:  # a long message: its size is checked against the server's
            await _know_value_limit(app)
            commands = app._call_commands(message, due, message.encode())
        await link.submit(commands)
        app._emit_enqueued(prepared)
        return [AsyncResult(message.id, app, queue=message.queue, sent_at=time.monotonic(),
                            ignored=message.ignore_result)]
    sure = app._sure_body
    if any(len(m.body) > sure for m, _ in prepared):
        await _know_value_limit(app)
        app._check_sizes(prepared)
    # Each batch is one call of the batcher: together they ride in few writes.
    sent = await asyncio.gather(*(link.submit(b) for b in app._batches(prepared)),
                                return_exceptions=True)
    failed = next((r for r in sent if isinstance(r, BaseException)), None)
    if failed is not None:
        if not isinstance(failed, BrokerError):
            raise failed
        answered = [not isinstance(r, BaseException) for r in sent]
        raise partly_enqueued(app, prepared, answered, failed, BATCH) from failed
    app._emit_enqueued(prepared)
    sent_at = time.monotonic()
    return [AsyncResult(m.id, app, queue=m.queue, sent_at=sent_at, ignored=m.ignore_result)
            for m, _ in prepared]


def submit(app: StreamQ, message: Message, due: int | None, durable: bool | None
           ) -> Coroutine[Any, Any, AsyncResult]:
    """``adelay()``/``aapply_async()``: one call, queued for this loop turn's write the
    moment it is made (see ``Enqueued``); ``aenqueue``'s coroutine outside a running
    loop, in eager mode, with ``enqueued`` hooks, for a durable call (refused there) and
    for a message longer than the server's value limit is known to allow."""
    settings = app.settings
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # asyncio.run(task.adelay()) still works: a coroutine
        loop = None
    if loop is None or settings.eager or app.hooks.wants("enqueued") or \
            (settings.durable if durable is None else durable):
        return _only(aenqueue(app, [(message, due)], durable=durable))
    link = app.aio.current()
    commands = _packed(app, link, message, due)
    if commands is None:  # the server's value limit is to be read first
        return _only(aenqueue(app, [(message, due)], durable=durable))
    handle = AsyncResult(message.id, app, queue=message.queue, sent_at=time.monotonic(),
                         ignored=message.ignore_result)
    enqueued = Enqueued(loop=loop)
    link.submit(commands, enqueued, handle)
    return enqueued


async def _only(results: Awaitable[list[AsyncResult]]) -> AsyncResult:
    return (await results)[0]


class Enqueued(asyncio.Future[AsyncResult], Coroutine[Any, Any, AsyncResult]):
    """A call already queued for the write of this loop turn; awaiting it gives its
    handle once the server has the call (or raises the call's error).

    An asyncio future, so ``gather`` takes it as it is: no ``Task`` per call (a Task
    costs about as much as the rest of an ``adelay()`` together). It is a coroutine
    too, for ``asyncio.create_task`` and ``TaskGroup.create_task``: stepped, it waits
    for itself, as a coroutine awaiting it would."""

    __slots__ = ()

    def send(self, value: Any) -> Any:
        if not self.done():
            self._asyncio_future_blocking = True  # what ``Future.__await__`` yields with
            return self
        raise StopIteration(self.result())

    def throw(self, exc: Any, *_: Any) -> Any:
        raise exc

    def close(self) -> None:
        pass


def _packed(app: StreamQ, link: Any, message: Message, due: int | None
            ) -> list[bytes] | None:
    """One call's commands: by the template of its shape (every field but the id, body
    and enqueue time), else by ``_call_commands``, which a new shape's template is then
    made from; None for a message longer than the server's value limit is known to
    allow (read the limit, then pack it with ``_call_commands``)."""
    settings = app.settings
    shape: tuple[Any, ...] | None = message[1:3] + message[6:7] + message[8:]
    try:
        known = link.templates.get(shape)  # (the settings it was made for, it)
    except TypeError:  # an unhashable field (a canvas step's continuation)
        known = shape = None
    if due is None and known is not None and known[0] is settings and known[1] is not None:
        commands: list[bytes] | None = cast("_Template", known[1]).pack(app, message)
        if commands is not None:
            return commands
    encoded = message.encode()
    if len(encoded) > app._sure_body:
        return None
    commands = app._call_commands(message, due, encoded)
    if shape is not None and (known is None or known[0] is not settings) and \
            len(link.templates) < _TEMPLATES:
        link.templates[shape] = (settings, _Template.build(app, message))
    return commands


class _Template:
    """The packed commands of one call of a task to a queue, due now, with a generated
    id, as ``StreamQ._call_commands`` packs them, with three holes: the id, the
    enqueue time and the (signed) message. Filling them costs a fraction of packing.

    It is cut from ``_call_commands``' own output for placeholder values (after a call
    to the queue, so without its one-off SADD) and kept only if it then packs another
    call exactly as ``_call_commands`` does; a call it does not fit (a chosen id, a
    long or unencodable message) is packed by ``_call_commands``."""

    __slots__ = ("sure", "id_len", "formats")

    def __init__(self, sure: int, id_len: int, formats: list[tuple[bytes, Any]]) -> None:
        self.sure = sure
        self.id_len = id_len
        self.formats = formats
        """Per command: a ``%b`` format and what of (id, enqueue time, message) fills it
        (an ``itemgetter``; None: the command has no hole)."""

    def pack(self, app: StreamQ, message: Message) -> list[bytes] | None:
        """The call's commands; None when this template does not fit it."""
        task_id, enq = message.id, message.enqueued_ms
        if len(task_id) != self.id_len or not _ENQ_LOW <= enq < _ENQ_HIGH or \
                queue_of(task_id) != message.queue:
            return None
        encoded = message.encode()
        if len(encoded) > self.sure:
            return None
        try:
            holes = (task_id.encode(), b"%d" % enq, _bulk(app, encoded))
        except UnicodeEncodeError:  # _call_commands raises it, as it always did
            return None
        return [fmt if fill is None else fmt % fill(holes) for fmt, fill in self.formats]

    @classmethod
    def build(cls, app: StreamQ, message: Message) -> _Template | None:
        """The template of ``message``'s task, queue and ``ignore_result``; None when
        one cannot be made."""
        queue = message.queue
        holes = (new_task_id(queue), _ENQ_LOW + secrets.randbelow(_ENQ_HIGH - _ENQ_LOW),
                 f"streamq-template-{secrets.token_hex(16)}")
        marks = [holes[0].encode(), b"%d" % holes[1], _bulk(app, holes[2])]
        split = re.compile(b"(" + b"|".join(re.escape(m) for m in marks) + b")")
        formats: list[tuple[bytes, Any]] = []
        for command in cls._packed(app, message, *holes):
            parts = split.split(command)
            fill = [marks.index(m) for m in parts[1::2]]
            formats.append((b"%b".join(p.replace(b"%", b"%%") for p in parts[::2]),
                            itemgetter(*fill) if fill else None))
        template = cls(app._sure_body, len(holes[0]), formats)
        sample = message._replace(id=new_task_id(queue), enqueued_ms=now_ms(),
                                  body=f"{message.body!r} %d %b %% \u00e9")
        expected = cls._packed(app, sample, sample.id, sample.enqueued_ms, sample.encode())
        return template if template.pack(app, sample) == expected else None

    @staticmethod
    def _packed(app: StreamQ, message: Message, task_id: str, enq: int, encoded: str
                ) -> list[bytes]:
        """``_call_commands`` of ``message`` with this id, enqueue time and envelope."""
        commands: list[bytes] = []
        app._enqueue_one(commands, message._replace(id=task_id, enqueued_ms=enq), None, enq,
                         app.settings.result_ttl,
                         encoded if app.signer is None else app.signer.sign(encoded))
        return commands


def _bulk(app: StreamQ, encoded: str) -> bytes:
    """An envelope as the argument it is packed as (signed when signing is on)."""
    value = encoded.encode() if app.signer is None else app.signer.sign(encoded)
    return b"$%d\r\n%b\r\n" % (len(value), value)


_TEMPLATES = 256  # shapes of call per event loop at most (a partition key is one each)
_ENQ_LOW, _ENQ_HIGH = 10 ** 12, 10 ** 13  # enqueue times of 13 digits (2001 to 2286)


async def _know_value_limit(app: StreamQ) -> None:
    """Read the server's value limit without blocking the loop, before the size check
    (which would otherwise read it with the blocking client)."""
    if app._value_limit is None:
        app._value_limit = await app.aio.current().value_limit() or DEFAULT_VALUE_LIMIT
