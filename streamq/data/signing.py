"""Signed messages: an HMAC-SHA256 over the whole stream value, checked before decoding.

A signed value is ``sq1:<64 hex digits>:<envelope>``; the digest covers the envelope's
bytes exactly as stored (task name, id, arguments, options, content type: all of it
is in the envelope). Anyone who can write to a stream can make a worker run a task;
with a key, a worker runs only what a holder of the key wrote.

Keys rotate without downtime: messages are signed with the first key of the list
and any listed key verifies one. Unsigned values start with ``{``, so a worker without
a key still reads signed ones (``strip``) and one with a key tells them apart at once.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = b"sq1:"
_DIGEST_HEX = 64
OVERHEAD = len(PREFIX) + _DIGEST_HEX + 1
"""Bytes a signature adds to a value."""


class BadSignature(Exception):  # noqa: N818 - a verdict, raised and caught here and in the executor
    """A value that is not signed by any of the keys; ``str()`` says why in one line."""


class Signer:
    """Signs with the first of ``keys`` and verifies with any (never shows them)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keys = keys

    def __repr__(self) -> str:
        return f"<Signer with {len(self._keys)} key(s)>"

    def sign(self, envelope: str) -> bytes:
        """The stored value of ``envelope``: its signature, then its bytes."""
        body = envelope.encode("utf-8")
        digest = hmac.new(self._keys[0], body, hashlib.sha256).hexdigest().encode("ascii")
        return PREFIX + digest + b":" + body

    def verify(self, raw: bytes | str) -> bytes:
        """The envelope of a value signed by one of the keys; ``BadSignature`` for
        anything else, decided without parsing the envelope."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if not raw.startswith(PREFIX):
            raise BadSignature("bad signature: the message is not signed (this worker "
                               "has a signing key and runs only signed messages)")
        end = len(PREFIX) + _DIGEST_HEX
        if raw[end:end + 1] != b":":
            raise BadSignature("bad signature: the signature is malformed")
        given, body = raw[len(PREFIX):end], raw[end + 1:]
        for key in self._keys:
            expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")
            if hmac.compare_digest(expected, given):
                return body
        raise BadSignature("bad signature: it matches none of this worker's signing keys "
                           "(signed with another key, or changed after signing)")


def strip(raw: bytes | str) -> bytes | str:
    """The envelope of a value, signed or not, without checking its signature (for
    reading and display; running a message is decided by ``Signer.verify``)."""
    if isinstance(raw, bytes):
        if raw.startswith(PREFIX) and raw[OVERHEAD - 1:OVERHEAD] == b":":
            return raw[OVERHEAD:]
        return raw
    if raw.startswith("sq1:") and raw[OVERHEAD - 1:OVERHEAD] == ":":
        return raw[OVERHEAD:]
    return raw


def signer_for(keys: tuple[bytes, ...]) -> Signer | None:
    """The signer of these keys; None when signing is off."""
    return Signer(keys) if keys else None
