"""``streamq probe``: is a worker of this host alive? For liveness probes (Kubernetes,
Docker ``HEALTHCHECK``, systemd watchdogs).

It asks the server, not the process: a worker counts as alive while its supervisor
heartbeats its registration (within three of its own heartbeat periods), which the
supervisor does from a thread that never runs task code, so a long task does not make
a worker look dead, and a worker that lost its server does.
"""

from __future__ import annotations

import json
import socket
import sys

import click

from ..base.ids import parse_worker_id
from .common import app_from_options, url_option


@click.command()
@click.option("--host", default=None, metavar="HOST",
              help="The host whose worker to look for (default: this one's name; in a "
                   "Kubernetes pod, the pod's name).")
@click.option("--json", "as_json", is_flag=True, help="Print the live workers found as JSON.")
@url_option
def probe(host: str | None, as_json: bool, url: str | None, namespace: str | None,
          app_spec: str | None) -> None:
    """Exit 0 if a live worker of HOST is registered on the server, else 1 (one line).

    \b
    Example (a Kubernetes liveness probe):
      streamq probe          # exit 0: this pod's worker heartbeats
    """
    host = host or socket.gethostname()
    app = app_from_options(url, namespace, app_spec, start_server=False)
    where = app.masked_url
    try:
        found = [w for w in app.server.registry.live_workers(3, app.settings.heartbeat_s)
                 if (parsed := parse_worker_id(w.id)) is not None and parsed.host == host]
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps([{"id": w.id, "queues": list(w.queues),
                                "last_heartbeat_ms": w.last_heartbeat_ms} for w in found]))
    if not found:
        click.echo(f"streamq: no live worker of host {host!r} is registered on "
                   f"{where}", err=True)
        sys.exit(1)
    if not as_json:
        click.echo(f"{len(found)} live worker(s) of host {host}: "
                   f"{', '.join(w.id for w in found)}")
