"""The connection to one server (or one cluster): clients, and this process's own
connections for the hot path. Errors become streamq's in ``translate``: ``Client``
does it for each command and pipeline (``cluster.ClusterClient`` on a cluster).

redis-py 8 defaults to a 5 s socket timeout, which breaks long blocking reads, so
blocking clients get ``BLOCK + margin`` instead. Clients are created lazily in each
process; redis-py's pool notices a fork and reconnects in the child.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.client
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as _RedisRetry

from ..base.clusterurl import is_cluster
from ..base.errors import ConfigurationError
from ..base.sentinelurl import is_sentinel
from ..base.settings import Settings, mask_url, scrub, validate_url
from . import sentinel
from .translate import check_tls_files, translate, translated

if TYPE_CHECKING:
    from .cluster import Router

__all__ = ["TRANSIENT", "Client", "Connection", "Pipeline", "check_tls_files", "make_client",
           "resolve_url", "translate", "translated"]

TRANSIENT = frozenset({"OOM", "BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN",
                       "MOVED", "ASK", *sentinel.FAILED_OVER})
"""Reply codes that say "not now": back off and try again, never give up a process
(READONLY and UNBLOCKED: a failover; the connection that saw one is dropped; MOVED
and ASK: a slot moving between cluster nodes, which the cluster router follows)."""


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
        if is_cluster(url):
            from .cluster import make_cluster_client

            # The same commands as a Client's, routed by slot (see ``cluster``).
            cluster = make_cluster_client(url, options)
            check_tls_files(url, cluster.nodes_manager.connection_kwargs)
            return cast(Client, cluster)
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
        self._routers: dict[bool, Router] = {}

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

    @property
    def is_cluster(self) -> bool:
        return is_cluster(self.url)

    def router(self, blocking: bool = False) -> Router | None:
        """On a cluster, what sends packed exchanges to the nodes of their slots
        (``cluster.Router``); None on a single server (use ``own``)."""
        found = self._routers.get(blocking)
        if found is None and self.is_cluster:
            from .cluster import ClusterClient, Router

            client = self.blocking_client if blocking else self.client
            found = self._routers[blocking] = Router(cast(ClusterClient, client))
        return found

    def translated(self) -> translated:
        return translated(self._url or self.settings.url)

    def close(self) -> None:
        for c in (self._client, self._blocking):
            if c is not None:
                c.close()
                sentinel.close_sentinels(c)
        self._client = self._blocking = None
        self._routers = {}
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
