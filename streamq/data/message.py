"""The message: one enqueued call, carrying everything a worker needs.

A message travels as a single JSON document (the stream field ``m``), so the Lua
scripts that requeue, delay or dead-letter it move one opaque value and never
parse it. Binary payloads (pickle-family serializers) are base64-encoded inside.
"""

from __future__ import annotations

import base64
import json
import re
import time
from json.encoder import encode_basestring as _quote
from typing import Any, NamedTuple

from ..base.errors import DecodeError
from .signing import strip

SCHEMA_VERSION = 1
_decode_json = json.JSONDecoder().decode
_dump_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def now_ms() -> int:
    return int(time.time() * 1000)


class Message(NamedTuple):
    """One call of one task (immutable; a NamedTuple because enqueue builds one per
    call and a frozen dataclass costs several times more to construct).

    ``retries`` counts the attempts that failed and were retried so far; the
    delivery count of the current attempt comes from the stream's pending list.
    ``handbacks`` counts how often workers that did not know the task handed this
    attempt back (a rolling deploy); it is written only when not 0, and an envelope
    without it (any older one) reads as 0.
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
    handbacks: int = 0
    ignore_result: bool = False
    """No record is kept for this call (``ignore_result=True``): written as ``nr``."""
    then: dict[str, Any] | None = None
    """A canvas step's continuation (``streamq.api.canvas``): what to forward when it
    succeeds or fails for good, as a JSON object whose later messages are envelopes
    themselves (objects, never strings: nested strings would double their escapes at
    every level). Written only when present."""
    key: str | None = None
    """The ``partition_key`` of a call to a partitioned queue: calls with one key run
    one at a time, in enqueue order (``streamq.server.ordering``); written as ``pk``."""

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
        if self.handbacks:
            extra += f',"handbacks":{int(self.handbacks)}'
        if self.ignore_result:
            extra += ',"nr":true'
        if self.then is not None:
            extra += ',"then":' + _dump_json(self.then)
        if self.key is not None:
            extra += ',"pk":' + _quote(self.key)
        return (f'{{"v":{int(self.version)},"id":{_quote(self.id)},"task":{_quote(self.task)},'
                f'"queue":{_quote(self.queue)},"ct":{_quote(self.content_type)},'
                f'"ce":{_quote(self.content_encoding)},"body":{_quote(text)},'
                f'"b64":{"true" if binary else "false"},"retries":{int(self.retries)},'
                f'"enq_ms":{int(self.enqueued_ms)}{extra}}}')

    @classmethod
    def decode(cls, raw: bytes | str) -> Message:
        """Parse an encoded message; anything malformed raises ``DecodeError`` (whatever
        the error: an entry nested too deeply or holding ``Infinity`` included), whose
        message says in one line what was wrong.

        A body must be a string (base64 text with ``b64``): a hand-back writes the
        envelope again before the arguments are decoded."""
        raw = strip(raw)  # a signature was checked, if at all, before (``signing``)
        try:
            return cls.from_doc(_decode_json(raw.decode("utf-8") if isinstance(raw, bytes)
                                             else raw))
        except Exception as exc:
            raise DecodeError(f"malformed message envelope: {_explain(raw, exc)}", raw) \
                from exc

    @classmethod
    def from_doc(cls, doc: Any) -> Message:
        """The message of a parsed envelope (also one nested in a continuation);
        raises whatever is wrong with it (``decode`` says it in one line)."""
        get = doc.get
        body = doc["body"]
        if get("b64"):
            body = base64.b64decode(body)
        elif not isinstance(body, str):
            raise TypeError("body not a string")
        retries = int(get("retries", 0))
        if retries < 0:
            raise ValueError("negative retries")
        handbacks = get("handbacks")
        if handbacks is not None:
            handbacks = int(handbacks)
            if handbacks < 0:
                raise ValueError("negative handbacks")
        # Checked here, not where they are used: a hand-back writes them again, and
        # a forged value of the wrong type must not break that write.
        eta_ms, error = get("eta_ms"), get("error")
        if eta_ms is not None:
            eta_ms = int(eta_ms)
        if error is not None and not isinstance(error, str):
            raise TypeError("error not a string")
        then = get("then")
        if then is not None and not isinstance(then, dict):
            raise TypeError("then not an object")
        key = get("pk")
        if key is not None and not isinstance(key, str):
            raise TypeError("pk not a string")
        # Positional: this runs once per task, and keywords cost a third more.
        return cls(str(doc["id"]), str(doc["task"]), str(doc["queue"]), str(doc["ct"]),
                   str(doc["ce"]), body, retries, int(get("enq_ms", 0)),
                   eta_ms, error, int(get("v", SCHEMA_VERSION)), handbacks or 0,
                   get("nr") is True, then, key)

    def doc(self) -> dict[str, Any]:
        """The envelope as a JSON object, to nest in a continuation (``then``)."""
        return _decode_json(self.encode())  # type: ignore[no-any-return]

    def with_retry(self, error: str | None, eta_ms: int | None) -> Message:
        """The next attempt (its own hand-backs start over)."""
        return self._replace(retries=self.retries + 1, last_error=error, eta_ms=eta_ms,
                             handbacks=0)

    def handed_back(self, eta_ms: int) -> Message:
        """The same attempt, handed back by a worker that does not know its task: due
        at ``eta_ms``, one more hand-back, and no retry counted."""
        return self._replace(handbacks=self.handbacks + 1, eta_ms=eta_ms)

    def reset(self) -> Message:
        """The message as requeued from dead letters: retries start over."""
        return self._replace(retries=0, last_error=None, eta_ms=None, handbacks=0)


# The head ``Message.encode`` writes: version, id and task come first.
_HEAD = re.compile(r'\{"v":\d{1,9},"id":("(?:[^"\\]|\\.){1,512}?"),'
                   r'"task":("(?:[^"\\]|\\.){1,512}?")[,}]')
_HEAD_CHARS = 2200


def peek_ids(raw: bytes | str, *, parse: bool = True) -> tuple[str | None, str | None]:
    """Best-effort (task id, task name) from a raw entry that may not decode: from the
    parsed document, else from the head streamq writes (a bounded match that never
    parses the rest); only the head with ``parse=False``, for an entry that must not
    be decoded again."""
    raw = strip(raw)
    if parse:
        try:
            doc = json.loads(raw)
            tid, name = doc.get("id"), doc.get("task")
            return (tid if isinstance(tid, str) and tid else None,
                    name if isinstance(name, str) and name else None)
        except Exception:  # the head below is the fallback
            pass
    try:
        head = raw[:_HEAD_CHARS]
        match = _HEAD.match(head.decode("utf-8", "replace") if isinstance(head, bytes)
                            else head)
        if match is None:
            return None, None
        tid, name = json.loads(match[1]), json.loads(match[2])
        return tid or None, name or None
    except Exception:
        return None, None


def kind_of(value: Any) -> str:
    """A decoded JSON value's kind, as JSON names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (never raises)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _explain(raw: bytes | str, exc: Exception) -> str:
    """One line saying what is wrong with an envelope that did not decode (the error
    path only: it parses the entry again)."""
    if isinstance(exc, RecursionError):
        return f"nested too deeply ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 ({exc})"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding it (MemoryError)"
    try:
        doc = json.loads(raw)
    except Exception:
        return f"not JSON ({type(exc).__name__}: {exc})"
    if not isinstance(doc, dict):
        return f"not a JSON object but {kind_of(doc)}"
    missing = [f for f in ("id", "task", "queue", "ct", "ce", "body") if f not in doc]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if doc.get("then") is not None and not isinstance(doc["then"], dict):
        return f"field 'then' is {kind_of(doc['then'])}, not an object"
    if doc.get("error") is not None and not isinstance(doc["error"], str):
        return f"field 'error' is {kind_of(doc['error'])}, not a string"
    for field in ("retries", "enq_ms", "v", "handbacks", "eta_ms"):
        value = doc.get(field, 0)
        if value is None and field in ("handbacks", "eta_ms"):
            continue  # these two may be null
        try:
            number = int(value)
        except Exception as bad:
            return (f"field {field!r} is not an integer: {short_repr(value)} "
                    f"({type(bad).__name__}: {bad})")
        if field in ("retries", "handbacks") and number < 0:
            return f"field {field!r} is negative: {short_repr(value)}"
    body = doc["body"]
    if not isinstance(body, str):
        return f"field 'body' is {kind_of(body)}, not a string"
    if doc.get("b64"):
        return f"field 'body' is not valid base64 ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"
