"""Deliveries and their outcomes, as values.

The executor decides what happened to a delivery and returns one of these; the
server layer's ``OutcomeWriter`` turns a batch of them into one write. An outcome
says everything the writer needs (the record to store, the message to schedule or
dead-letter), so it can come back from any thread or coroutine.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(slots=True)
class Delivery:
    """One stream entry handed to this consumer."""

    queue: str
    entry_id: str
    raw: bytes | None
    """The encoded message; None when the entry was deleted while pending."""
    deliveries: int = 1
    read_at: float = 0.0
    """When this consumer read it (``time.monotonic()``); 0 for a claimed entry."""
    order: tuple[str, int] | None = None
    """(partition key, number) of a call the order gate let run (``gate.lua``): its
    outcome lets the key's next call run."""


class Forward(NamedTuple):
    """One step of a canvas to take after an outcome (``streamq.worker.continuations``):
    run ``script`` on the target's slot with ``keys`` and ``args``. It is written to
    the outbox under ``item`` in the step that acknowledges the outcome, then sent
    right behind it; every forward script is idempotent, so one sent twice (the outbox
    sweep after a crash) does nothing the second time."""

    item: str
    """The outbox field: ``<task id>#<n>``, the same for every run of that task."""
    script: str
    keys: list[str]
    args: list[Any]

    def encode(self) -> str:
        """The outbox value: JSON, binary arguments in base64 (listed in ``b``)."""
        binary = [i for i, a in enumerate(self.args) if isinstance(a, bytes | bytearray)]
        args = [base64.b64encode(a).decode("ascii") if i in binary else a
                for i, a in enumerate(self.args)]
        return json.dumps({"s": self.script, "k": self.keys, "a": args, "b": binary},
                          separators=(",", ":"))

    @classmethod
    def decode(cls, item: str, raw: bytes | str) -> Forward:
        doc = json.loads(raw)
        args = list(doc["a"])
        for i in doc.get("b", ()):
            args[i] = base64.b64decode(args[i])
        return cls(item, str(doc["s"]), [str(k) for k in doc["k"]], args)


class Succeeded(NamedTuple):
    """The task returned: store its result and acknowledge. The writer names the
    fields of this, the common record, instead of the executor."""

    delivery: Delivery
    task_id: str
    task: str
    result: bytes | str
    content_type: str
    content_encoding: str
    started_ms: int
    runtime_s: float
    stored: bool = True
    """False for a task that keeps no record (``ignore_result``): only acknowledged."""
    forward: tuple[Forward, ...] = ()
    """A canvas step's continuation (the writer packs nothing more without one)."""


class Retried(NamedTuple):
    """Schedule ``message`` (the next attempt) at ``due_ms`` and acknowledge this one."""

    delivery: Delivery
    task_id: str
    task: str
    due_ms: int
    message: bytes | str
    record: list[Any]
    record_ttl_s: int
    """The record must outlive the wait until the retry is due."""
    countdown_s: float
    error: str


class Failed(NamedTuple):
    """The task failed for good: a FAILURE record, and its message to dead letters."""

    delivery: Delivery
    task_id: str
    task: str
    retries: int
    reason: str
    """The dead letter's reason: attempts, error and traceback."""
    record: list[Any]
    error: str
    """``Type: message`` of the last attempt."""
    forward: tuple[Forward, ...] = ()


class Dead(NamedTuple):
    """The message cannot run (rejected, undecodable, unknown task, delivered too
    often): to dead letters with ``reason``; a DEAD record when its task id is known."""

    delivery: Delivery
    task_id: str | None
    task: str
    retries: int
    reason: str
    record: list[Any] | None
    forward: tuple[Forward, ...] = ()


class Released(NamedTuple):
    """Hand the entry back unstarted, as a new entry at the stream's tail."""

    delivery: Delivery


class Gone(NamedTuple):
    """The entry was deleted while pending (purged): only acknowledge it."""

    delivery: Delivery


Outcome = Succeeded | Retried | Failed | Dead | Released | Gone

COUNTED = {Succeeded: "succeeded", Retried: "retried", Failed: "failed", Dead: "dead"}
"""The name each counted outcome has in the per-minute stats and worker counters."""
