"""Clients for a primary that Sentinel watches (``redis+sentinel://`` URLs).

redis-py's Sentinel pool asks the Sentinels for the primary each time a connection
connects, and drops a connection whose server answers READONLY (it was demoted), so
the next use finds the new primary. streamq adds two cases the pool does not see: a
blocked read that a demotion unblocks ("UNBLOCKED ... master -> replica") and
replies read by streamq's own reply readers; both mean "reconnect" (``FAILED_OVER``).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import redis
import redis.connection
import redis.sentinel

from ..base import sentinelurl
from ..base.settings import mask_url

FAILED_OVER = ("READONLY", "UNBLOCKED")
"""Reply codes from a server that is no longer the primary: reconnect and go on."""

C = TypeVar("C", bound=redis.Redis)


def failed_over(reply: object) -> bool:
    """Whether an error reply says its server is no longer the primary."""
    return isinstance(reply, redis.ResponseError) and (
        isinstance(reply, redis.exceptions.ReadOnlyError) or
        str(reply).startswith(FAILED_OVER))


class PrimaryConnection(redis.sentinel.SentinelManagedConnection):
    """A connection that asks the Sentinels for the primary whenever it connects.
    redis-py's resolves it only in ``connect()``, which its pool calls; streamq's own
    connections connect on first send (``connect_check_health``), and would otherwise
    go to the default host."""

    def connect(self) -> None:
        self.connect_check_health()

    def connect_check_health(self, check_health: bool = True,
                             retry_socket_connect: bool = True) -> None:
        if self._sock is None:
            self.host, self.port = self.connection_pool.get_master_address()
        # Past SentinelManagedConnection: the plain connect, to the address just found.
        redis.connection.Connection.connect_check_health(self, check_health,
                                                         retry_socket_connect)


def _sentinel_options(target: sentinelurl.SentinelURL, options: dict[str, Any]
                      ) -> dict[str, Any]:
    timeout = options.get("socket_connect_timeout") or 2.0
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout,
            "username": target.sentinel_username, "password": target.sentinel_password}


def _primary_options(target: sentinelurl.SentinelURL, options: dict[str, Any]
                     ) -> dict[str, Any]:
    return {"db": target.db, "username": target.username, "password": target.password,
            "client_name": target.client_name, **options}


def _sync_primary_options(target: sentinelurl.SentinelURL, options: dict[str, Any]
                          ) -> dict[str, Any]:
    return {**_primary_options(target, options), "connection_class": PrimaryConnection}


def client(url: str, cls: type[C], **options: Any) -> C:
    """A ``cls`` client of the primary named in ``url`` (``options``: its connection
    options, as ``from_url`` takes them)."""
    target = sentinelurl.parse(url, mask_url(url))
    manager = redis.sentinel.Sentinel(target.sentinels,  # type: ignore[no-untyped-call]
                                      sentinel_kwargs=_sentinel_options(target, options))
    primary = manager.master_for(target.service, redis_class=cls,  # type: ignore[no-untyped-call]
                                 **_sync_primary_options(target, options))
    primary.streamq_sentinels = list(manager.sentinels)
    return cast(C, primary)


def close_sentinels(client: object) -> None:
    """Close the links to the Sentinels of a client made by ``client()``."""
    for link in getattr(client, "streamq_sentinels", ()):
        link.close()
