"""Task records (one hash per task, with a TTL) and ``AsyncResult``.

A record is written with the message at enqueue and rewritten at every state
change; each write refreshes its TTL. When a record turns final, the worker
publishes on ``ns:done:<id>``, which ``AsyncResult.get`` waits on: a blocking
read on a socket, no polling loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import keys, serialization
from .errors import ResultNotFoundError, ResultTimeoutError, TaskFailed

if TYPE_CHECKING:
    from .app import StreamQ

PENDING = "PENDING"
SCHEDULED = "SCHEDULED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
DEAD = "DEAD"
UNKNOWN = "UNKNOWN"
FINAL_STATES = frozenset({SUCCESS, FAILURE, DEAD})
STATES = (PENDING, SCHEDULED, STARTED, RETRY, SUCCESS, FAILURE, DEAD, UNKNOWN)

_INT_FIELDS = ("retries", "deliveries", "enqueued_ms", "eta_ms", "started_ms",
               "finished_ms", "dead_at_ms", "runtime_ms")


def write(pipe: Any, ns: str, task_id: str, fields: dict[str, Any], ttl_s: int,
          *, final: bool = False) -> None:
    """Queue a record update (and its TTL refresh) on ``pipe``."""
    key = keys.result(ns, task_id)
    pipe.hset(key, mapping={k: v for k, v in fields.items() if v is not None})
    pipe.expire(key, ttl_s)
    if final:
        pipe.publish(keys.done_channel(ns, task_id), fields.get("status", ""))


def write_many(pipe: Any, broker: Any, ns: str,
               records: list[tuple[str, dict[str, Any], bool]], ttl_s: int) -> None:
    """Queue many record updates as one script call (one command per batch instead
    of three per task)."""
    keys_: list[str] = []
    args: list[Any] = [ttl_s]
    for task_id, fields, final in records:
        keys_.append(keys.result(ns, task_id))
        items = [(k, v) for k, v in fields.items() if v is not None]
        args += [keys.done_channel(ns, task_id) if final else "", len(items)]
        for k, v in items:
            args += [k, v]
    broker.evalsha(pipe, "records", keys_, args)


def decode_record(raw: dict[bytes, bytes]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in raw.items():
        name = k.decode()
        if name == "result":
            rec[name] = v
            continue
        text = v.decode("utf-8", "replace")
        rec[name] = int(text) if name in _INT_FIELDS and text.lstrip("-").isdigit() else text
    return rec


class AsyncResult:
    """A handle on one task's record: its status, and its result once final."""

    def __init__(self, task_id: str, app: StreamQ) -> None:
        self.id = task_id
        self.app = app

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def _key(self) -> str:
        return keys.result(self.app.settings.namespace, self.id)

    def _record(self) -> dict[str, Any]:
        broker = self.app.broker
        with broker.errors():
            raw = broker.client.hgetall(self._key)
        return decode_record(raw) if raw else {}

    @property
    def status(self) -> str:
        broker = self.app.broker
        with broker.errors():
            value = broker.client.hget(self._key, "status")
        return value.decode() if value else UNKNOWN

    state = status

    @property
    def info(self) -> dict[str, Any]:
        """The stored record as a dict (``result`` decoded); empty for an unknown id."""
        rec = self._record()
        if "result" in rec:
            rec["result"] = self._decode_result(rec)
        return rec

    def ready(self) -> bool:
        return self.status in FINAL_STATES

    def successful(self) -> bool:
        return self.status == SUCCESS

    def failed(self) -> bool:
        return self.status in (FAILURE, DEAD)

    def forget(self) -> None:
        """Delete the record; the id then reads as UNKNOWN."""
        broker = self.app.broker
        with broker.errors():
            broker.client.delete(self._key)

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the task to finish and return its value.

        Raises ``TaskFailed`` if it failed or went to dead letters (when
        ``propagate``; otherwise that exception is returned), ``ResultTimeoutError``
        (a ``TimeoutError``) when ``timeout`` seconds pass, and
        ``ResultNotFoundError`` for an id with no record.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        rec = self._record()
        if rec.get("status") not in FINAL_STATES:
            rec = self._wait(deadline, rec)
        return self._outcome(rec, propagate)

    def _wait(self, deadline: float | None, rec: dict[str, Any]) -> dict[str, Any]:
        if not rec:
            raise ResultNotFoundError(
                f"no record for task {self.id}: it was never enqueued here, was forgotten, "
                f"or its record expired (result_ttl)"
            )
        broker = self.app.broker
        channel = keys.done_channel(self.app.settings.namespace, self.id).encode()
        with broker.errors():
            pubsub = broker.result_pubsub()
            try:
                pubsub.subscribe(channel)
                # Wait for this subscription to be live before re-reading the record,
                # so a completion between the two cannot be missed.
                _wait_for(pubsub, channel, ("subscribe",), broker.settings.socket_timeout_s)
                while True:
                    rec = self._record()
                    status = rec.get("status")
                    if status in FINAL_STATES:
                        return rec
                    if not rec:
                        raise ResultNotFoundError(
                            f"the record of task {self.id} disappeared while waiting "
                            f"(forgotten or expired)"
                        )
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise ResultTimeoutError(
                            f"task {self.id} did not finish within the timeout "
                            f"(status {status})"
                        )
                    # The periodic wake-up only guards against a record that expires
                    # while we wait; completion wakes us through the channel at once.
                    _wait_for(pubsub, channel, ("message",),
                              5.0 if remaining is None else min(remaining, 5.0))
            except BaseException:
                broker.drop_result_pubsub()
                raise
            else:
                pubsub.unsubscribe(channel)

    def _decode_result(self, rec: dict[str, Any]) -> Any:
        return serialization.loads(
            rec["result"], rec.get("result_ct", "application/json"),
            rec.get("result_ce", "utf-8"), accept=self.app.accept_content_types,
        )

    def _outcome(self, rec: dict[str, Any], propagate: bool) -> Any:
        status = rec["status"]
        if status == SUCCESS:
            return self._decode_result(rec) if "result" in rec else None
        exc = TaskFailed(
            self.id,
            rec.get("exc_type") or ("DeadLetter" if status == DEAD else "Error"),
            rec.get("exc_message") or rec.get("reason", ""),
            rec.get("traceback", ""),
            status=status,
        )
        if propagate:
            raise exc
        return exc


def _wait_for(pubsub: Any, channel: bytes, types: tuple[str, ...], timeout: float) -> bool:
    """Block on the pub/sub socket until a message of ``types`` for ``channel``
    arrives (others, e.g. late unsubscribe confirmations, are skipped)."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return False
        msg = pubsub.get_message(timeout=left)
        if msg and msg["type"] in types and msg["channel"] == channel:
            return True
