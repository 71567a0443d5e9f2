"""``streamq server``: the embedded Valkey server of this directory, in the foreground."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--stop", is_flag=True, help="Stop the embedded server of this directory.")
def server(stop: bool) -> None:
    """Run the embedded Valkey server of this directory in the foreground.

    \b
    Example:
      streamq server          # state in ./.streamq/, unix socket, AOF on
    """
    from ..server import embedded

    if stop:
        stopped = embedded.stop_embedded()
        click.echo("stopped the embedded server" if stopped else "no embedded server running")
        return
    sys.exit(embedded.run_server_foreground())
