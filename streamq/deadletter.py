"""Dead letters: list, requeue (retries reset) and purge a queue's dead-letter stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import keys, results
from .errors import DecodeError
from .message import Message, now_ms

if TYPE_CHECKING:
    from .app import StreamQ

_PAGE = 200
_REQUEUE_COMMANDS = 5  # see _queue_requeue


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


def _s(v: bytes | None) -> str:
    return v.decode("utf-8", "replace") if v else ""


def _parse(queue: str, entry_id: bytes | str, f: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        queue=queue, task=_s(f.get(b"task")), task_id=_s(f.get(b"id")),
        reason=_s(f.get(b"reason")), at_ms=int(f.get(b"at_ms") or 0),
        deliveries=int(f.get(b"deliveries") or 0), retries=int(f.get(b"retries") or 0),
        raw=f.get(b"m", b""),
    )


class DeadLetters:
    """The dead-letter operations of one app (``app.dead``)."""

    def __init__(self, app: StreamQ) -> None:
        self.app = app

    def _queues(self, queue: str | None) -> list[str]:
        return [queue] if queue else self.app.broker.queues()

    def count(self, queue: str) -> int:
        with self.app.broker.errors():
            return int(self.app.broker.client.xlen(keys.dead(self.app.settings.namespace,
                                                             queue)))

    def list(self, queue: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, of one queue or of every known queue."""
        out: list[DeadLetter] = []
        ns, client = self.app.settings.namespace, self.app.broker.client
        with self.app.broker.errors():
            for q in self._queues(queue):
                start = "-"
                while limit is None or len(out) < limit:
                    page = client.xrange(keys.dead(ns, q), start, "+", count=_PAGE)
                    out += [_parse(q, i, f) for i, f in page]
                    if len(page) < _PAGE:
                        break
                    start = "(" + page[-1][0].decode()
        return out[:limit] if limit is not None else out

    def requeue(self, queue: str | None = None, entry_ids: Iterable[str] | None = None,
                progress: Callable[[int], None] | None = None) -> int:
        """Move dead letters back to their stream with retries reset (status PENDING).
        ``entry_ids=None`` requeues all. Returns how many moved."""
        broker, ns, ttl = self.app.broker, self.app.settings.namespace, \
            self.app.settings.result_ttl
        wanted = set(entry_ids) if entry_ids is not None else None
        todo: list[tuple[DeadLetter, Message]] = []
        for dl in self.list(queue):
            if wanted is not None and dl.entry_id not in wanted:
                continue
            try:
                todo.append((dl, Message.decode(dl.raw)))
            except DecodeError:
                # An undecodable message would only come straight back; leave it here.
                continue
        moved = 0
        for start in range(0, len(todo), _PAGE):
            chunk = todo[start:start + _PAGE]
            with broker.errors():
                pipe = broker.client.pipeline(transaction=False)
                for dl, msg in chunk:
                    self._queue_requeue(pipe, dl, msg, ns, ttl)
                replies = broker.execute(pipe)
            # Each letter queued _REQUEUE_COMMANDS commands; the first says if it moved.
            moved += sum(int(r) for r in replies[::_REQUEUE_COMMANDS])
            if progress is not None:
                progress(len(chunk))
        return moved

    def _queue_requeue(self, pipe: Any, dl: DeadLetter, msg: Message, ns: str, ttl: int
                       ) -> None:
        """Queue the move back to the stream (retries reset) and the record reset."""
        self.app.broker.evalsha(pipe, "requeue_dead",
                                [keys.dead(ns, dl.queue), keys.stream(ns, dl.queue)],
                                [dl.entry_id, msg.reset().encode()])
        results.write(pipe, ns, msg.id, {"status": results.PENDING, "retries": 0,
                                         "task": msg.task, "queue": msg.queue,
                                         "enqueued_ms": now_ms()}, ttl)
        pipe.delete(keys.done(ns, msg.id))  # its old completion is void now
        pipe.hdel(keys.result(ns, msg.id), "exc_type", "exc_message", "traceback", "reason",
                  "result", "finished_ms", "dead_at_ms", "runtime_ms")

    def purge(self, queue: str | None = None) -> int:
        """Delete every dead letter of a queue (or of all queues); returns how many."""
        ns, client = self.app.settings.namespace, self.app.broker.client
        total = 0
        with self.app.broker.errors():
            for q in self._queues(queue):
                key = keys.dead(ns, q)
                pipe = client.pipeline(transaction=True)
                pipe.xlen(key)
                pipe.delete(key)
                total += int(pipe.execute()[0])
        return total
