"""The error of a multi-call enqueue that failed part way: which calls were enqueued,
which may have been, and which were not sent (``EnqueueError``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..base.errors import BrokerConnectionError, BrokerError, EnqueueConnectionError, EnqueueError
from ..data.message import Message
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import StreamQ


def partly_enqueued(app: StreamQ, prepared: Sequence[tuple[Message, int | None]],
                    answered: list[bool], exc: BrokerError, per_batch: int,
                    durable: bool = False) -> EnqueueError:
    """The error of a multi-call enqueue that failed after ``answered`` batches of
    ``per_batch`` calls (True: written for sure)."""
    sent_at = time.monotonic()
    handles: list[AsyncResult] = []
    enqueued: list[AsyncResult] = []
    unknown: list[AsyncResult] = []
    written: list[tuple[Message, int | None]] = []
    for n, ok in enumerate(answered):
        batch = prepared[n * per_batch:(n + 1) * per_batch]
        if ok:
            written += batch
        for m, _ in batch:
            handle = AsyncResult(m.id, app, queue=m.queue, sent_at=sent_at if ok else None)
            handles.append(handle)
            (enqueued if ok else unknown).append(handle)
    not_sent = [AsyncResult(m.id, app, queue=m.queue)
                for m, _ in prepared[len(answered) * per_batch:]]
    handles += not_sent
    app._emit_enqueued(written)
    cause = " ".join(str(exc).split())
    cls = EnqueueConnectionError if isinstance(exc, BrokerConnectionError) else EnqueueError
    return cls(f"enqueueing {len(prepared)} calls failed: {len(enqueued)} "
               f"enqueued, {len(unknown)} unknown (their batch failed or got no reply), "
               f"{len(not_sent)} not sent{' (none confirmed on disk)' if durable else ''}"
               f": {cause}", exc.code, handles=handles,
               enqueued=enqueued, unknown=unknown, not_sent=not_sent)

