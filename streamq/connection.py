"""Redis clients built from Settings, and the one place redis errors become streamq errors.

redis-py 8 defaults to a 5 s socket timeout, which breaks long blocking reads, so
blocking clients get ``BLOCK + margin`` instead. Clients are created lazily in each
process; redis-py's pool notices a fork and reconnects in the child.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as _RedisRetry

from .errors import BrokerConnectionError, BrokerError, ConfigurationError
from .settings import Settings, mask_url


def resolve_url(settings: Settings) -> str:
    """The URL to use: explicit, then STREAMQ_URL, then the embedded server."""
    if settings.url:
        return settings.url
    env = os.environ.get("STREAMQ_URL")
    if env:
        return env
    from .embedded import embedded_url

    return embedded_url(Path.cwd())


def make_client(url: str, settings: Settings, *, blocking: bool = False) -> redis.Redis:
    timeout = settings.socket_timeout_s + (settings.block_ms / 1000.0 if blocking else 0.0)
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=settings.connect_timeout_s,
            # A few quick retries ride out a blip; a dead server surfaces within ~2 s.
            retry=_RedisRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 4),
            health_check_interval=30,
            client_name=None,
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid server URL {mask_url(url)!r}: {exc}") from None


class redis_errors:  # noqa: N801 - used like the function it replaced: with redis_errors(url)
    """Translate redis-py's errors into streamq's, naming the (masked) URL.

    A class rather than a generator context manager: it wraps every enqueue, and
    costs a third as much."""

    __slots__ = ("url",)

    def __init__(self, url: str | None) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if exc is None:
            return
        url = self.url
        if isinstance(exc, redis.AuthenticationError):
            raise BrokerConnectionError(
                f"authentication failed at {mask_url(url)}: {exc}") from exc
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise BrokerConnectionError(
                f"cannot reach the Redis server at {mask_url(url)}: {exc}; "
                f"is it running, and is the URL right?"
            ) from exc
        if isinstance(exc, redis.ResponseError):
            raise BrokerError(f"the server at {mask_url(url)} answered: {exc}") from exc


def is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def is_busygroup(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("BUSYGROUP")
