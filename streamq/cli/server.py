"""``streamq server``: the embedded Valkey server of this project, in the foreground;
``--stop`` stops it, ``--list`` shows every embedded server of this user."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from .common import stdout_console


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _list(as_json: bool) -> None:
    from ..server.projects import running_servers

    servers = running_servers()
    if as_json:
        click.echo(json.dumps([{"project": str(s.project), "url": s.url, "pid": s.pid,
                                "started": s.started, "uptime_s": s.uptime_s}
                               for s in servers], indent=2))
        return
    if not servers:
        click.echo("no embedded streamq servers are running")
        return
    table = Table("project", "url", "pid", "up", title=f"embedded servers ({len(servers)})")
    for s in servers:
        table.add_row(Text(str(s.project)), Text(s.url), str(s.pid), _uptime(s.uptime_s))
    console = stdout_console()
    console.print(table)
    console.print("stop one with `streamq server --stop` in its project, every one with "
                  "`streamq server --stop --all`", markup=False)


def _stop(project: Path | None) -> None:
    from ..server import embedded

    where = embedded.find_project() if project is None else project
    others = embedded.connected_clients(where)
    if not embedded.stop_embedded(where):
        click.echo(f"no embedded server is running for {where}")
        return
    note = f" (it had {others} client connection(s); a `streamq worker` among them starts " \
           "it again: stop workers first)" if others else ""
    click.echo(f"stopped the embedded server of {where}{note}")


@click.command()
@click.option("--stop", is_flag=True, help="Stop the embedded server of this project.")
@click.option("--all", "all_", is_flag=True,
              help="With --stop: stop every embedded server that --list shows.")
@click.option("--list", "list_", is_flag=True,
              help="List every running embedded server of this user: project, URL, pid.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print JSON.")
def server(stop: bool, all_: bool, list_: bool, as_json: bool) -> None:
    """Run the embedded Valkey server of this project in the foreground.

    The project is the nearest directory, from here up, that holds .streamq/,
    pyproject.toml or .git (else this directory); its state is in .streamq/ there.

    \b
    Example:
      streamq server          # state in .streamq/ of the project, unix socket, AOF on
      streamq server --list   # every embedded server running on this machine (yours)
      streamq server --stop   # stop this project's (its data stays)
    """
    if stop and list_:
        raise click.UsageError("--stop and --list do not go together")
    if all_ and not stop:
        raise click.UsageError("--all goes with --stop")
    if as_json and not list_:
        raise click.UsageError("--json goes with --list")
    if list_:
        _list(as_json)
        return
    if stop:
        if not all_:
            _stop(None)
            return
        from ..server.projects import running_servers

        servers = running_servers()
        if not servers:
            click.echo("no embedded streamq servers are running")
        for s in servers:
            _stop(s.project)
        return
    from ..server import embedded

    sys.exit(embedded.run_server_foreground())
