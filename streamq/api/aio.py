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
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..base.errors import BrokerError, ConfigurationError
from ..data.message import Message
from . import eager
from .limits import DEFAULT_VALUE_LIMIT
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ


async def aenqueue(app: StreamQ, prepared: Sequence[tuple[Message, int | None]], *,
                   many: bool = False, durable: bool | None = None) -> list[AsyncResult]:
    """``StreamQ.enqueue`` on the running event loop (see the module docstring)."""
    if app.settings.durable if durable is None else durable:
        raise ConfigurationError(
            "durable enqueue is not available from asyncio (adelay, aapply_async, amap); "
            "nothing was sent. Pass durable=False to aapply_async, or enqueue durably "
            "with delay()/apply_async() (e.g. in asyncio.to_thread)")
    if app.settings.eager:  # run here and now, without a server (streamq.api.eager)
        return await eager.aenqueue(app, prepared)
    link = app.aio.current()
    sure = app._sure_body
    if len(prepared) == 1 and not many:
        message, due = prepared[0]
        encoded = message.encode()
        if len(encoded) > sure:
            await _know_value_limit(app)
        await link.send(app._call_commands(message, due, encoded))
        app._emit_enqueued(prepared)
        return [AsyncResult(message.id, app, queue=message.queue, sent_at=time.monotonic(),
                            ignored=message.ignore_result)]
    if any(len(m.body) > sure for m, _ in prepared):
        await _know_value_limit(app)
        app._check_sizes(prepared)
    # Each batch is one call of the batcher: together they ride in few writes.
    sent = await asyncio.gather(*(link.send(b) for b in app._batches(prepared)),
                                return_exceptions=True)
    failed = next((r for r in sent if isinstance(r, BaseException)), None)
    if failed is not None:
        if not isinstance(failed, BrokerError):
            raise failed
        answered = [not isinstance(r, BaseException) for r in sent]
        raise app._partly_enqueued(prepared, answered, failed) from failed
    app._emit_enqueued(prepared)
    sent_at = time.monotonic()
    return [AsyncResult(m.id, app, queue=m.queue, sent_at=sent_at, ignored=m.ignore_result)
            for m, _ in prepared]


async def _know_value_limit(app: StreamQ) -> None:
    """Read the server's value limit without blocking the loop, before the size check
    (which would otherwise read it with the blocking client)."""
    if app._value_limit is None:
        app._value_limit = await app.aio.current().value_limit() or DEFAULT_VALUE_LIMIT
