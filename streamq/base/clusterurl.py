"""Cluster URLs: ``redis+cluster://[user:password@]host:port[,host:port...][/0]``
(``rediss+cluster://`` for TLS).

The hosts are seed nodes: a client asks any of them for the slot map and then talks
to every primary. The rest of the URL reads as a ``redis://`` URL does (the same
query parameters, TLS options with ``rediss+cluster``); a cluster has only db 0.
Parsed by hand, after any password, for the reason ``settings.mask_url`` gives.
"""

from __future__ import annotations

import re

from .errors import ConfigurationError
from .urlhosts import parse_hosts

SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379

_USERINFO = re.compile(r"^([^:/?#@]*(?::.*)?@)(?=[^@]*$)")


def is_cluster(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0].lower() in SCHEMES


def split(url: str, shown: str) -> tuple[str, list[tuple[str, int]]]:
    """The first seed as a plain ``redis://`` (or ``rediss://``) URL carrying the
    user, password and query, and every seed's ``(host, port)``; else a
    ``ConfigurationError`` naming what is wrong (``shown``: the URL, masked)."""
    example = "expected redis+cluster://[user:password@]host:port[,host:port...][/0]"
    scheme, rest = url.split("://", 1)
    found = _USERINFO.match(rest)
    userinfo = found.group(1) if found else ""
    rest = rest[len(userinfo):]
    rest, mark, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    seeds = parse_hosts(hosts, DEFAULT_PORT, shown, "node address", example)
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            f"server URL {shown!r} names db {path.strip('/')!r}: a cluster has only db 0; "
            f"{example}")
    first, first_port = seeds[0]
    first = f"[{first}]" if ":" in first else first
    plain = (f"{scheme.lower().split('+', 1)[0]}://{userinfo}{first}:{first_port}/0"
             f"{mark}{query}")
    return plain, seeds
