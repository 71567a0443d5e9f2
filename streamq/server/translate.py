"""The one place where redis-py's errors become streamq's.

Every exchange translates its errors here (as httpx maps its transport's errors at
one boundary): the clients do it for each command and pipeline (``connection``,
``cluster``), the transport for the packed hot path. Nothing above the server layer
sees a redis-py exception.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import redis
import redis.sentinel

from ..base.errors import BrokerConnectionError, BrokerError, StreamQError
from ..base.settings import mask_url

# redis-py turns these replies into classes and drops their code from the text.
_CODES: dict[type[BaseException], str] = {
    redis.exceptions.NoScriptError: "NOSCRIPT",
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.BusyLoadingError: "LOADING",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.ClusterCrossSlotError: "CROSSSLOT",
    redis.exceptions.NoPermissionError: "NOPERM",
    redis.exceptions.MovedError: "MOVED",
    redis.exceptions.AskError: "ASK",
    redis.exceptions.TryAgainError: "TRYAGAIN",
    redis.exceptions.ClusterDownError: "CLUSTERDOWN",
}

_TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
"""URL parameters that name a file (a directory for ``ssl_ca_path``)."""

def translate(exc: BaseException, url: str | None) -> StreamQError | None:
    """The streamq error for a redis-py one (None for anything else)."""
    if isinstance(exc, redis.sentinel.MasterNotFoundError):
        return BrokerConnectionError(
            f"no Sentinel of {mask_url(url)} names a reachable primary ({exc}); are the "
            f"Sentinels running, and is the service name the one they monitor?")
    if isinstance(exc, redis.AuthenticationError):
        return BrokerConnectionError(f"authentication failed at {mask_url(url)}: {exc}")
    if isinstance(exc, redis.ConnectionError) and (url or "").lower().startswith("rediss:"):
        tls = _tls_failure(exc)
        if tls:
            return BrokerConnectionError(f"TLS connection to {_where(url)} failed: {tls}")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return BrokerConnectionError(
            f"cannot reach the Redis server at {mask_url(url)}: {exc}; "
            f"is it running, and is the URL right?")
    if isinstance(exc, redis.ResponseError):
        text = str(exc)
        code = _CODES.get(type(exc)) or (text.split(" ", 1)[0] if text[:1].isupper() else "")
        if code == "NOPERM":
            return BrokerError(
                f"the server at {mask_url(url)} refused this for the URL's user (ACL): "
                f"{text}; give the user the rule in the README's \"Security and "
                f"durability\" section", code)
        return BrokerError(f"the server at {mask_url(url)} answered: {text}", code)
    if isinstance(exc, redis.RedisError):
        return BrokerError(f"error talking to the server at {mask_url(url)}: {exc}")
    return None


def _where(url: str | None) -> str:
    """The masked URL without its query (a TLS URL's file paths make a long line)."""
    return mask_url(url).split("?", 1)[0]


def _tls_failure(exc: BaseException) -> str:
    """What went wrong in a TLS handshake, with what to do; "" if ``exc`` is not that.
    redis-py raises ConnectionError inside ``except OSError``, so the SSL error is its
    context; a server that rejects a client sends EOF instead of an alert."""
    cause = exc.__context__
    text = str(cause if cause is not None else exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        if "match" in text.lower():
            return (f"{cause.verify_message}: connect by a name or address the "
                    f"server's certificate lists")
        return (f"the server's certificate is not trusted ({cause.verify_message}): "
                f"ssl_ca_certs must name the CA that signed it")
    if isinstance(cause, ssl.SSLError) or "EOF occurred in violation" in text:
        return (f"{getattr(cause, 'reason', None) or text.strip('. ')}; does the server "
                f"require a client certificate (ssl_certfile and ssl_keyfile), or speak "
                f"TLS on that port at all?")
    return ""


def check_tls_files(url: str, options: dict[str, Any]) -> None:
    """A missing or unreadable certificate, key or CA file named in ``url`` as a
    ``BrokerConnectionError`` naming its parameter (redis-py says only "No such file
    or directory", and only after its retries)."""
    for name in _TLS_FILES:
        path = options.get(name)
        if path is None:
            continue
        kind = "directory" if name == "ssl_ca_path" else "file"
        ok = os.path.isdir(path) if kind == "directory" else os.path.isfile(path)
        if not ok or not os.access(path, os.R_OK):
            shown = path if os.path.isabs(path) else f"{path} (from {os.getcwd()})"
            why = f"no such {kind}" if not os.path.exists(path) else f"not a readable {kind}"
            raise BrokerConnectionError(f"cannot use {name}={shown} of {_where(url)}: {why}")


class translated:  # noqa: N801 - a context manager used like a function
    """``with translated(url):`` raises streamq errors for redis-py ones (a class
    rather than a generator: it wraps every enqueue, and costs a third as much)."""

    __slots__ = ("url",)

    def __init__(self, url: str | None) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if exc is not None:
            mapped = translate(exc, self.url)
            if mapped is not None:
                raise mapped from exc


def as_str(value: object) -> str:
    """A reply value as text (bytes decoded, undecodable bytes replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)
