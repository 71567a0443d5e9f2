"""The connection to one server: clients, this process's own connections, and the one
place where redis-py's errors become streamq's.

Every exchange translates its errors here (as httpx maps its transport's errors at
one boundary): ``Client`` does it for each command and pipeline, ``Connection.run``
and ``Connection.send`` for the packed hot path. Nothing above the server layer
sees a redis-py exception.

redis-py 8 defaults to a 5 s socket timeout, which breaks long blocking reads, so
blocking clients get ``BLOCK + margin`` instead. Clients are created lazily in each
process; redis-py's pool notices a fork and reconnects in the child.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
from collections.abc import Iterator
from typing import Any, cast

import redis
import redis.client
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as _RedisRetry

from ..base.errors import BrokerConnectionError, BrokerError, ConfigurationError, StreamQError
from ..base.sentinelurl import is_sentinel
from ..base.settings import Settings, mask_url, scrub, validate_url
from . import sentinel

# redis-py turns these replies into classes and drops their code from the text.
_CODES: dict[type[BaseException], str] = {
    redis.exceptions.NoScriptError: "NOSCRIPT",
    redis.exceptions.OutOfMemoryError: "OOM",
    redis.exceptions.BusyLoadingError: "LOADING",
    redis.exceptions.ReadOnlyError: "READONLY",
    redis.exceptions.ClusterCrossSlotError: "CROSSSLOT",
    redis.exceptions.NoPermissionError: "NOPERM",
}

_TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
"""URL parameters that name a file (a directory for ``ssl_ca_path``)."""

TRANSIENT = frozenset({"OOM", "BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN",
                       *sentinel.FAILED_OVER})
"""Reply codes that say "not now": back off and try again, never give up a process
(READONLY and UNBLOCKED: a failover; the connection that saw one is dropped)."""


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


class Pipeline(redis.client.Pipeline):
    """A redis-py pipeline whose ``execute`` raises streamq errors. With
    ``raise_on_error=False`` the failed replies come back as ``BrokerError`` values."""

    streamq_url: str | None = None

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with translated(self.streamq_url):
            replies = super().execute(raise_on_error)
        if raise_on_error:
            return replies
        return [translate(r, self.streamq_url) if isinstance(r, redis.RedisError) else r
                for r in replies]


class Client(redis.Redis):
    """A redis-py client whose commands and pipelines raise streamq errors."""

    streamq_url: str | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        with translated(self.streamq_url):
            return super().execute_command(  # type: ignore[no-untyped-call]
                *args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = Pipeline(self.connection_pool, self.response_callbacks, transaction,
                        shard_hint)
        pipe.streamq_url = self.streamq_url
        return pipe


def resolve_url(settings: Settings) -> str:
    """The URL to use: the configured one, else the embedded server of the project
    (the nearest directory, from the working directory up, holding ``.streamq/``,
    ``pyproject.toml`` or ``.git``; see ``embedded.resolve_embedded``)."""
    if settings.url:
        return settings.url
    from .embedded import embedded_url

    return embedded_url()


def make_client(url: str, settings: Settings, *, blocking: bool = False) -> Client:
    timeout = settings.socket_timeout_s + (settings.block_ms / 1000.0 if blocking else 0.0)
    validate_url(url)  # the embedded server's URL has not been through Settings
    try:
        options: dict[str, Any] = dict(
            socket_timeout=timeout,
            socket_connect_timeout=settings.connect_timeout_s,
            # A few quick retries ride out a blip; a dead server surfaces within ~2 s.
            retry=_RedisRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 4),
            health_check_interval=30,
        )
        if is_sentinel(url):
            client = sentinel.client(url, Client, **options)
        else:
            # redis-py annotates from_url as returning Redis, but it builds a cls.
            client = cast(Client, Client.from_url(url, **options))
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid server URL {mask_url(url)!r}: {scrub(str(exc), url)} (percent-encode "
            f"'/', '#', '?' and '@' in a password, e.g. '/' as %2F)") from None
    client.streamq_url = url
    check_tls_files(url, client.connection_pool.connection_kwargs)
    return client


class Connection:
    """One app's link to its server in one process: a client for commands, a client
    for blocking reads, and this process's own raw connections for the hot path
    (see ``own``). Made lazily; ``close`` drops them and the next use reconnects."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._url: str | None = None
        self._client: Client | None = None
        self._blocking: Client | None = None
        self._own: dict[int, Any] = {}
        self._own_pid = os.getpid()
        self._own_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server URL (starting the embedded server if none is configured)."""
        if self._url is None:
            self._url = resolve_url(self.settings)
        return self._url

    @property
    def masked_url(self) -> str:
        return mask_url(self._url or self.settings.url)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.url, self.settings)
        return self._client

    @property
    def blocking_client(self) -> Client:
        if self._blocking is None:
            self._blocking = make_client(self.url, self.settings, blocking=True)
        return self._blocking

    def translated(self) -> translated:
        return translated(self._url or self.settings.url)

    def close(self) -> None:
        for c in (self._client, self._blocking):
            if c is not None:
                c.close()
                sentinel.close_sentinels(c)
        self._client = self._blocking = None
        if self._own_pid == os.getpid():
            for conn in self._own.values():
                conn.disconnect()
        self._own = {}

    @contextlib.contextmanager
    def own(self, blocking: bool = False) -> Iterator[Any]:
        """A raw connection for one exchange: this process's own one when it is free,
        because taking one from redis-py's pool (with its health and observability
        hooks) costs more than the round trip of a delay(); one from the pool when
        another thread holds it."""
        client = self.blocking_client if blocking else self.client
        if os.getpid() != self._own_pid:  # a fork: the parent's connections are not ours
            self._own, self._own_pid, self._own_lock = {}, os.getpid(), threading.Lock()
        if self._own_lock.acquire(blocking=False):
            try:
                conn = self._own.get(id(client))
                if conn is None:
                    pool = client.connection_pool
                    conn = self._own[id(client)] = pool.connection_class(
                        **pool.connection_kwargs)
                yield conn
            finally:
                self._own_lock.release()
            return
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            yield conn
        finally:
            pool.release(conn)
