"""The message: one enqueued call, carrying everything a worker needs.

A message travels as a single JSON document (the stream field ``m``), so the Lua
scripts that requeue, delay or dead-letter it move one opaque value and never
parse it. Binary payloads (pickle-family serializers) are base64-encoded inside.
"""

from __future__ import annotations

import base64
import json
import time
from json.encoder import encode_basestring as _quote
from typing import NamedTuple

from ..base.errors import DecodeError

SCHEMA_VERSION = 1
_decode_json = json.JSONDecoder().decode


def now_ms() -> int:
    return int(time.time() * 1000)


class Message(NamedTuple):
    """One call of one task (immutable; a NamedTuple because enqueue builds one per
    call and a frozen dataclass costs several times more to construct).

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
    enqueued_ms: int = 0
    eta_ms: int | None = None
    last_error: str | None = None
    version: int = SCHEMA_VERSION

    def encode(self) -> str:
        """The JSON envelope, written directly (this runs once per enqueued call)."""
        body = self.body
        if isinstance(body, bytes | bytearray):
            binary = True
            text = base64.b64encode(body).decode("ascii")
        else:
            binary = False
            text = body
        extra = ""
        if self.eta_ms is not None:
            extra += f',"eta_ms":{int(self.eta_ms)}'
        if self.last_error is not None:
            extra += f',"error":{_quote(self.last_error)}'
        return (f'{{"v":{int(self.version)},"id":{_quote(self.id)},"task":{_quote(self.task)},'
                f'"queue":{_quote(self.queue)},"ct":{_quote(self.content_type)},'
                f'"ce":{_quote(self.content_encoding)},"body":{_quote(text)},'
                f'"b64":{"true" if binary else "false"},"retries":{int(self.retries)},'
                f'"enq_ms":{int(self.enqueued_ms)}{extra}}}')

    @classmethod
    def decode(cls, raw: bytes | str) -> Message:
        """Parse an encoded message; anything malformed raises ``DecodeError``."""
        try:
            doc = _decode_json(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            get = doc.get
            body = doc["body"]
            if get("b64"):
                body = base64.b64decode(body)
            # Positional: this runs once per task, and keywords cost a third more.
            return cls(str(doc["id"]), str(doc["task"]), str(doc["queue"]), str(doc["ct"]),
                       str(doc["ce"]), body, int(get("retries", 0)), int(get("enq_ms", 0)),
                       get("eta_ms"), get("error"), int(get("v", SCHEMA_VERSION)))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise DecodeError(f"malformed message envelope: {exc!r}", raw) from exc

    def with_retry(self, error: str | None, eta_ms: int | None) -> Message:
        return self._replace(retries=self.retries + 1, last_error=error, eta_ms=eta_ms)

    def reset(self) -> Message:
        """The message as requeued from dead letters: retries start over."""
        return self._replace(retries=0, last_error=None, eta_ms=None)


def peek_ids(raw: bytes | str) -> tuple[str | None, str | None]:
    """Best-effort (task id, task name) from a raw entry that may not decode."""
    try:
        doc = json.loads(raw)
        return (str(doc.get("id")) if doc.get("id") else None,
                str(doc.get("task")) if doc.get("task") else None)
    except (ValueError, TypeError, AttributeError):
        return None, None
