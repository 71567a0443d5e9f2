"""Dead letters: list, requeue (retries reset) and purge a queue's dead-letter stream.

Each dead letter is the whole message plus why it died (``outcomes.lua`` writes
them). A requeue resets the task's record and puts the message back in one script
(``requeue_dead.lua``), record first, and only for a letter it actually moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..base import keys
from ..base.errors import DecodeError
from ..base.settings import Settings
from ..data import record
from ..data.message import Message, now_ms
from ..data.signing import BadSignature, signer_for
from .broker import Broker, as_str
from .transport import Packed, Transport

_PAGE = 200


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    queue: str
    task: str
    task_id: str
    reason: str
    at_ms: int
    deliveries: int
    retries: int
    raw: bytes

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def as_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "queue": self.queue, "task": self.task,
                "task_id": self.task_id, "reason": self.reason, "at_ms": self.at_ms,
                "age_s": round(max(0, now_ms() - self.at_ms) / 1000, 1),
                "deliveries": self.deliveries, "attempts": self.attempts}


def _parse(queue: str, entry_id: bytes | str, f: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        entry_id=as_str(entry_id),
        queue=queue, task=as_str(f.get(b"task", b"")), task_id=as_str(f.get(b"id", b"")),
        reason=as_str(f.get(b"reason", b"")), at_ms=int(f.get(b"at_ms") or 0),
        deliveries=int(f.get(b"deliveries") or 0), retries=int(f.get(b"retries") or 0),
        raw=f.get(b"m", b""),
    )


class DeadLetters:
    """The dead-letter operations of one namespace (``app.dead``)."""

    def __init__(self, transport: Transport, broker: Broker, settings: Settings) -> None:
        self.transport = transport
        self.broker = broker
        self.ns = settings.namespace
        self.ttl_s = settings.result_ttl
        self.signing_keys = settings.signing_keys

    @property
    def client(self) -> Any:
        return self.transport.connection.client

    def _queues(self, queue: str | None) -> list[str]:
        return [queue] if queue else self.broker.queues()

    def count(self, queue: str) -> int:
        return int(self.client.xlen(keys.dead(self.ns, queue)))

    def list(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, of one queue or of every known queue."""
        out: list[DeadLetter] = []
        for q in self._queues(queue):
            start = "-"
            while limit is None or len(out) < limit:
                page = self.client.xrange(keys.dead(self.ns, q), start, "+", count=_PAGE)
                out += [_parse(q, i, f) for i, f in page]
                if len(page) < _PAGE:
                    break
                start = "(" + page[-1][0].decode()
        return out[:limit] if limit is not None else out

    def requeue(self, queue: str | None = None, entry_ids: Iterable[str] | None = None,
                progress: Callable[[int], None] | None = None) -> int:
        """Move dead letters back to their stream with retries reset (status PENDING).
        ``entry_ids=None`` requeues all. Returns how many moved."""
        wanted = set(entry_ids) if entry_ids is not None else None
        todo: list[tuple[DeadLetter, Message]] = []
        signer = signer_for(self.signing_keys)
        for dl in self.list(queue):
            if wanted is not None and dl.entry_id not in wanted:
                continue
            if signer is not None:
                try:
                    signer.verify(dl.raw)
                except BadSignature:
                    # Signing it now would make a forged message trusted: left here.
                    continue
            try:
                todo.append((dl, Message.decode(dl.raw)))
            except DecodeError:
                # An undecodable message would only come straight back; leave it here.
                continue
        moved = 0
        seal = (lambda text: text) if signer is None else signer.sign
        for start in range(0, len(todo), _PAGE):
            chunk = todo[start:start + _PAGE]
            packed = Packed()
            for dl, msg in chunk:
                reset = record.requeued(msg.task, msg.queue, now_ms())
                packed.script("requeue_dead", [
                    keys.dead(self.ns, dl.queue), keys.stream(self.ns, dl.queue),
                    keys.record(self.ns, dl.queue, msg.id), keys.done(self.ns, dl.queue, msg.id),
                ], [dl.entry_id, seal(msg.reset().encode()), self.ttl_s, len(reset) // 2, *reset,
                    *record.OUTCOME_FIELDS])
            moved += sum(int(r) for r in self.transport.run(packed))
            if progress is not None:
                progress(len(chunk))
        return moved

    def purge(self, queue: str | None = None) -> int:
        """Delete every dead letter of a queue (or of all queues); returns how many."""
        total = 0
        for q in self._queues(queue):
            key = keys.dead(self.ns, q)
            pipe = self.client.pipeline(transaction=True)
            pipe.xlen(key)
            pipe.delete(key)
            total += int(pipe.execute()[0])
        return total
