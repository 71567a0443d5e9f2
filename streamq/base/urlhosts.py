"""The host list of a multi-host URL (``redis+sentinel://``, ``redis+cluster://``):
``host:port[,host:port...]``, parsed by hand, after any password (see
``settings.mask_url``)."""

from __future__ import annotations

from .errors import ConfigurationError


def parse_hosts(hosts: str, default_port: int, shown: str, what: str, example: str
                ) -> list[tuple[str, int]]:
    """Each ``(host, port)`` of ``hosts``; else a ``ConfigurationError`` naming the bad
    one (``what``: "Sentinel address", "node address"; ``shown``: the masked URL)."""
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"invalid {what} {part.strip()!r} in server URL {shown!r}; {example}")
        out.append((host.strip("[]"), int(port)))
    return out
