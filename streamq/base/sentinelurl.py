"""Sentinel URLs: ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``.

The hosts are the Sentinels, not the server: a client asks them for the current
primary of ``service`` and asks again after a failover. The user and password are
the primary's; ``sentinel_username``/``sentinel_password`` query parameters are the
Sentinels' own, for Sentinels that require a password. Parsed by hand, after any
password, for the reason ``settings.mask_url`` gives.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, unquote

from .errors import ConfigurationError
from .urlhosts import parse_hosts

SCHEME = "redis+sentinel"
PARAMS = ("sentinel_username", "sentinel_password", "client_name")
DEFAULT_PORT = 26379

_USERINFO = re.compile(r"^([^:/?#@]*)(?::(.*))?@(?=[^@]*$)")
_SERVICE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


class SentinelURL(NamedTuple):
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_username: str | None
    sentinel_password: str | None
    client_name: str | None


def is_sentinel(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0].lower() == SCHEME


def parse(url: str, shown: str) -> SentinelURL:
    """The parts of a Sentinel URL, else a ``ConfigurationError`` naming what is wrong
    (``shown``: the URL as errors may show it, its password masked)."""
    example = f"expected {SCHEME}://[user:password@]host:port[,host:port...]/service[/db]"
    rest = url.split("://", 1)[1]
    username = password = None
    found = _USERINFO.match(rest)
    if found:
        username = unquote(found.group(1)) or None
        password = unquote(found.group(2)) if found.group(2) is not None else None
        rest = rest[found.end():]
    rest, _, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    sentinels = parse_hosts(hosts, DEFAULT_PORT, shown, "Sentinel address", example)
    service, _, db = path.strip("/").partition("/")
    if not _SERVICE.match(service):
        raise ConfigurationError(
            f"server URL {shown!r} names no primary (the service name Sentinel monitors, "
            f"as in 'sentinel monitor mymaster ...'); {example}")
    if db and not db.isdigit():
        raise ConfigurationError(f"db {db!r} in server URL {shown!r} is not a number; {example}")
    params: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in PARAMS:
            raise ConfigurationError(
                f"unknown parameter {name!r} in server URL {shown.split('?', 1)[0]!r}; a "
                f"Sentinel URL reads {', '.join(PARAMS)}")
        if len(values) > 1 or not values[0]:
            raise ConfigurationError(f"parameter {name!r} in server URL "
                                     f"{shown.split('?', 1)[0]!r} needs exactly one value")
        params[name] = values[0]
    return SentinelURL(sentinels, service, int(db or 0), username, password,
                       params.get("sentinel_username"), params.get("sentinel_password"),
                       params.get("client_name"))
