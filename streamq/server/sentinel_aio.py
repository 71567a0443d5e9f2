"""``sentinel`` for ``redis.asyncio`` (apart, so that importing streamq does not import
redis.asyncio: only the asyncio producer needs it)."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel

from ..base import sentinelurl
from ..base.settings import mask_url
from .sentinel import _primary_options, _sentinel_options


class AsyncPrimaryConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """``PrimaryConnection`` for ``redis.asyncio``."""

    async def connect(self) -> None:
        await self.connect_check_health()

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        if not self.is_connected:
            self.host, self.port = await self.connection_pool.get_master_address()
        await redis.asyncio.connection.Connection.connect_check_health(
            self, check_health, retry_socket_connect)


class AsyncPrimary(redis.asyncio.Redis):
    """The asyncio client of a Sentinel URL: closing it closes its links to the
    Sentinels too (redis-py leaves them open)."""

    sentinels: list[redis.asyncio.Redis] = []

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for link in self.sentinels:
            await link.aclose()


def async_client(url: str, **options: Any) -> redis.asyncio.Redis:
    """``client`` for ``redis.asyncio``."""
    target = sentinelurl.parse(url, mask_url(url))
    manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=_sentinel_options(target, options))
    primary = cast(AsyncPrimary, manager.master_for(
        target.service, redis_class=AsyncPrimary, connection_class=AsyncPrimaryConnection,
        **_primary_options(target, options)))
    primary.sentinels = list(manager.sentinels)
    return primary
