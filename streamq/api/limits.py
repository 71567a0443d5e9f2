"""How large a call may be, and which serializers need signing: the app's checks
before anything is sent (``StreamQ.enqueue`` and the asyncio path use them)."""

from __future__ import annotations

from collections.abc import Callable

from ..base.errors import ConfigurationError, MessageTooLargeError
from ..base.settings import Settings
from ..data import serialization
from ..data.message import Message
from ..data.signing import Signer, signer_for

BATCH = 100
"""Calls per enqueue batch (and per script call): bounds how long one blocks the server."""
DEFAULT_VALUE_LIMIT = 512 * 1024 * 1024
"""The server's ``proto-max-bulk-len`` by default: assumed when CONFIG is refused."""
MIN_SERVER_LIMIT = 1024 * 1024
"""The least ``proto-max-bulk-len`` a server can have."""
SURE_BODY = 1024 * 1024 // 6 - 16 * 1024
"""Bodies up to this many characters fit in any server's value limit once wrapped in
their envelope (the least ``proto-max-bulk-len`` is 1 MiB; quoting turns a character
into at most 6 bytes), so only longer ones are measured."""


def sure_body(cap: int) -> int:
    """Bodies (and envelopes) up to this many characters fit in every limit, so only
    longer ones are measured: one ``len()`` on the hot path."""
    return SURE_BODY if not cap else min(SURE_BODY, cap // 6 - 16 * 1024)


def check_size(message: Message, encoded: str, cap: int, server_limit: Callable[[], int],
               where: str = "") -> None:
    """Refuse a message larger than ``cap`` (``max_message_bytes``; 0: none) or than the
    server accepts (a long one: measured exactly). The server accepts at least 1 MiB,
    so ``server_limit`` is asked only when ``cap`` is off or larger."""
    limit = cap if cap and cap <= MIN_SERVER_LIMIT else \
        min(cap or DEFAULT_VALUE_LIMIT, server_limit())
    if len(encoded) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character
        return
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return
    if limit == cap:
        raise MessageTooLargeError(
            f"{message.task}(){where}: its message of {size} bytes exceeds "
            f"max_message_bytes ({cap}); nothing was sent. Pass a reference to the "
            f"data (a key, a path, a URL) instead, or raise max_message_bytes "
            f"(STREAMQ_MAX_MESSAGE_BYTES; 0 disables it)", size, limit)
    raise MessageTooLargeError(
        f"{message.task}(){where}: its message of {size} bytes exceeds the "
        f"server's limit of {limit} bytes (proto-max-bulk-len); nothing was sent",
        size, limit)


PICKLE_FAMILY = frozenset({"pickle", "cloudpickle"})
"""Serializers whose decoding runs code: accepted only from signed messages."""


def checked_signer(settings: Settings) -> Signer | None:
    """The signer of ``settings``, after refusing a pickle-family serializer (sent or
    accepted) without signing: whoever can write to a queue could run any code."""
    for name in (settings.serializer, *settings.accepted):
        serialization.content_type_of(name)
    unsafe = sorted(PICKLE_FAMILY & {settings.serializer, *settings.accepted})
    if unsafe and not settings.signing_keys:
        raise ConfigurationError(
            f"serializer {unsafe[0]!r} lets anyone who can write to a queue run any code "
            f"in your workers; turn on message signing with signing_key=... (or "
            f"STREAMQ_SIGNING_KEY) on producers and workers to use it, or use 'json'")
    return signer_for(settings.signing_keys)
