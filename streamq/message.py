"""The message: one enqueued call, carrying everything a worker needs.

A message travels as a single JSON document (the stream field ``m``), so the Lua
scripts that requeue, delay or dead-letter it move one opaque value and never
parse it. Binary payloads (pickle-family serializers) are base64-encoded inside.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import DecodeError

SCHEMA_VERSION = 1


def new_task_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Message:
    """One call of one task.

    ``retries`` counts the attempts that failed and were retried so far; the
    delivery count of the current attempt comes from the stream's pending list.
    """

    id: str
    task: str
    queue: str
    content_type: str
    content_encoding: str
    body: bytes | str
    retries: int = 0
    enqueued_ms: int = field(default_factory=now_ms)
    eta_ms: int | None = None
    last_error: str | None = None
    version: int = SCHEMA_VERSION

    def encode(self) -> str:
        body = self.body
        binary = isinstance(body, bytes | bytearray)
        doc: dict[str, Any] = {
            "v": self.version,
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "ct": self.content_type,
            "ce": self.content_encoding,
            "body": base64.b64encode(body).decode("ascii") if binary else body,
            "b64": binary,
            "retries": self.retries,
            "enq_ms": self.enqueued_ms,
        }
        if self.eta_ms is not None:
            doc["eta_ms"] = self.eta_ms
        if self.last_error is not None:
            doc["error"] = self.last_error
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Message:
        """Parse an encoded message; anything malformed raises ``DecodeError``."""
        try:
            doc = json.loads(raw)
            body = doc["body"]
            if doc.get("b64"):
                body = base64.b64decode(body)
            return cls(
                id=str(doc["id"]),
                task=str(doc["task"]),
                queue=str(doc["queue"]),
                content_type=str(doc["ct"]),
                content_encoding=str(doc["ce"]),
                body=body,
                retries=int(doc.get("retries", 0)),
                enqueued_ms=int(doc.get("enq_ms", 0)),
                eta_ms=doc.get("eta_ms"),
                last_error=doc.get("error"),
                version=int(doc.get("v", SCHEMA_VERSION)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecodeError(f"malformed message envelope: {exc!r}", raw) from exc

    def with_retry(self, error: str | None, eta_ms: int | None) -> Message:
        return replace(self, retries=self.retries + 1, last_error=error, eta_ms=eta_ms)

    def reset(self) -> Message:
        """The message as requeued from dead letters: retries start over."""
        return replace(self, retries=0, last_error=None, eta_ms=None)


def peek_ids(raw: bytes | str) -> tuple[str | None, str | None]:
    """Best-effort (task id, task name) from a raw entry that may not decode."""
    try:
        doc = json.loads(raw)
        return (str(doc.get("id")) if doc.get("id") else None,
                str(doc.get("task")) if doc.get("task") else None)
    except (ValueError, TypeError, AttributeError):
        return None, None
