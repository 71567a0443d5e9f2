"""Task records (one hash per task, with a TTL) and ``AsyncResult``.

A record is written with the message at enqueue and rewritten at every state
change; each write refreshes its TTL. ``AsyncResult.get`` marks the record as
waited on (``wait.lua``, which also reads the status) and blocks with BLMOVE onto
itself on the short-lived list ``ns:done:<id>``; when a marked record turns final,
the worker pushes the outcome there (with the result, on success). So a waiter
wakes the moment the task finishes, consumes nothing (any number of waiters), and
usually gets the result with the wake-up; tasks nobody waits for cost no list. A
task this process enqueued is marked and waited for in one round trip; any other
takes two. Nothing polls.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

from . import keys, serialization
from .broker import Packed
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


DONE_TTL_S = 10
"""How long a completion list lives: it only has to outlast the moment between a
waiter's mark and its blocking read (wait.lua pushes a new one for a record that
was final before anyone waited). Short, because it costs ~200 bytes a task."""


def write(pipe: Any, ns: str, task_id: str, fields: dict[str, Any], ttl_s: int) -> None:
    """Queue a non-final record update (and its TTL refresh) on ``pipe``."""
    key = keys.result(ns, task_id)
    pipe.hset(key, mapping={k: v for k, v in fields.items() if v is not None})
    pipe.expire(key, ttl_s)


class Success(NamedTuple):
    """A success record, the hot path's one: the script names its fields."""

    result: bytes | str
    content_type: str
    content_encoding: str
    deliveries: int
    started_ms: int
    runtime_ms: int


def _completion(fields: dict[str, Any]) -> bytes | str:
    """What a waiter needs without re-reading the record: the result on success
    (``records.lua`` builds the same for a ``Success``); a failure only says so
    (the waiter then reads the error from the record)."""
    if fields.get("status") != SUCCESS:
        return "F"
    result = fields.get("result", "")
    head = f"S{fields.get('result_ct', '')}\n{fields.get('result_ce', 'utf-8')}\n"
    if isinstance(result, bytes | bytearray):
        return head.encode() + bytes(result)
    return head + result


def write_many(pipe: Any, broker: Any, ns: str,
               records: list[tuple[str, dict[str, Any] | Success, bool]], ttl_s: int,
               worker: str) -> None:
    """Queue many record updates as one script call (one command per batch instead
    of four per task); ``worker`` is the consumer that ran the ``Success`` ones."""
    keys_: list[str] = []
    args: list[Any] = [ttl_s, min(ttl_s, DONE_TTL_S), worker]
    for task_id, fields, final in records:
        keys_ += [keys.result(ns, task_id), keys.done(ns, task_id)]
        if isinstance(fields, Success):
            args.append("S")
            args += fields
            continue
        items = [(k, v) for k, v in fields.items() if v is not None]
        args += ["R", _completion(fields) if final else "", len(items)]
        for k, v in items:
            args += [k, v]
    broker.evalsha(pipe, "records", keys_, args)


def decode_record(raw: dict[bytes, bytes]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in raw.items():
        name = k.decode()
        if name == "waiting":  # wait.lua's mark, not part of the task's record
            continue
        if name == "result":
            rec[name] = v
            continue
        text = v.decode("utf-8", "replace")
        rec[name] = int(text) if name in _INT_FIELDS and text.lstrip("-").isdigit() else text
    return rec


class AsyncResult:
    """A handle on one task's record: its status, and its result once final."""

    def __init__(self, task_id: str, app: StreamQ, *, sent_at: float | None = None) -> None:
        self.id = task_id
        self.app = app
        # When this process enqueued the task (time.monotonic()), if it did: see get().
        self._sent_at = sent_at

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
            broker.client.delete(self._key, keys.done(self.app.settings.namespace, self.id))

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the task to finish and return its value.

        Raises ``TaskFailed`` if it failed or went to dead letters (when
        ``propagate``; otherwise that exception is returned), ``ResultTimeoutError``
        (a ``TimeoutError``) when ``timeout`` seconds pass, and
        ``ResultNotFoundError`` for an id with no record.
        """
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        # A task this process enqueued has a record, so marking it and blocking can
        # share one round trip: no block on a record that does not exist.
        known = self._sent_at is not None and \
            now - self._sent_at < self.app.settings.result_ttl
        status: str | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            # Wake-ups every few seconds only re-check a record that may have expired
            # meanwhile; completion wakes the read at once.
            block = self._max_block_s if remaining is None else \
                max(0.01, min(remaining, self._max_block_s))
            if known:
                status, payload = self._mark_and_wait(block)
            else:
                status = self._mark()
                payload = None if status is None else self._wait_done(block)
                known = True
            if payload is not None and payload[:1] == b"S":
                return self._decode_completion(payload)
            if status is None:
                raise ResultNotFoundError(
                    f"no record for task {self.id}: it was never enqueued here, was "
                    f"forgotten, or its record expired (result_ttl)"
                )
            if payload is not None:
                rec = self._record()
                if rec.get("status") in FINAL_STATES:
                    return self._outcome(rec, propagate)
                # A completion from an earlier run of a requeued task: it answers at
                # once, so pace the loop instead of spinning on it.
                time.sleep(min(0.1, remaining or 0.1))
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeoutError(
                    f"task {self.id} did not finish within the timeout (status {status})")

    def _mark(self) -> str | None:
        """wait.lua: the status (None for an unknown id), marking an unfinished
        record as waited on."""
        broker, ns = self.app.broker, self.app.settings.namespace
        with broker.errors():
            status = broker.call("wait", [self._key, keys.done(ns, self.id)],
                                 [self._done_ttl])
        return status.decode() if status else None

    def _mark_and_wait(self, seconds: float) -> tuple[str | None, bytes | None]:
        """``_mark`` and ``_wait_done`` in one round trip."""
        broker, ns = self.app.broker, self.app.settings.namespace
        # A NOSCRIPT here would leave the record unmarked while the BLMOVE after it
        # blocks a whole slice: the task's completion would never be pushed to it.
        broker.ensure_scripts()
        done = keys.done(ns, self.id)
        packed = Packed()
        broker.evalsha(packed, "wait", [self._key, done], [self._done_ttl])
        packed.execute_command("BLMOVE", done, done, "RIGHT", "LEFT", seconds)
        with broker.errors():
            status, payload = broker.run(packed)
        return (status.decode() if status else None), payload

    @property
    def _done_ttl(self) -> int:
        return min(self.app.settings.result_ttl, DONE_TTL_S)

    @property
    def _max_block_s(self) -> float:
        """The longest single blocking read: well inside the client's socket timeout,
        which would otherwise cut it off."""
        return max(0.1, min(5.0, self.app.settings.socket_timeout_s / 2))

    def _decode_completion(self, payload: bytes) -> Any:
        ct, ce, result = payload[1:].split(b"\n", 2)
        return serialization.loads(result, ct.decode(), ce.decode(),
                                   accept=self.app.accept_content_types)

    def _wait_done(self, seconds: float) -> bytes | None:
        broker = self.app.broker
        key = keys.done(self.app.settings.namespace, self.id)
        with broker.errors():
            # BLMOVE onto the same list: blocks until the completion is pushed and
            # leaves it there for every other waiter.
            return broker.client.blmove(key, key, max(seconds, 0.01), "RIGHT", "LEFT")

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

