"""``streamq server``: the embedded Valkey server of this project, in the foreground;
``--cluster N`` starts a local N-primary cluster instead (in the background); ``--stop``
stops either, ``--list`` shows every embedded server and cluster of this user."""

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
    from ..server import embedded, localcluster

    where = embedded.find_project() if project is None else project
    cluster = localcluster.find_local_cluster(where)
    if cluster is not None and cluster.stop():
        click.echo(f"stopped the local cluster of {where} ({len(cluster.nodes)} primaries; "
                   "its data stays)")
    others = embedded.connected_clients(where)
    if not embedded.stop_embedded(where):
        if cluster is None:
            click.echo(f"no embedded server is running for {where}")
        return
    note = f" (it had {others} client connection(s); a `streamq worker` among them starts " \
           "it again: stop workers first)" if others else ""
    click.echo(f"stopped the embedded server of {where}{note}")


def _start_cluster(primaries: int) -> None:
    from ..server import embedded, localcluster

    cluster = localcluster.start_local_cluster(primaries=primaries)
    project = cluster.project
    state = cluster.state_dir
    shown = f"./{state.relative_to(Path.cwd())}/" if state.is_relative_to(Path.cwd()) \
        else f"{state}/"
    if cluster.started:
        version = embedded.server_version()
        click.echo(f"streamq: started a local Valkey {version} cluster of {len(cluster.nodes)} "
                   f"primaries for {project} (state in {shown}, AOF on; "
                   "stop it with: streamq server --stop)")
    else:
        asked = "" if primaries == len(cluster.nodes) else \
            f", not the {primaries} asked for (stop it first to change that)"
        click.echo(f"streamq: a local cluster of {len(cluster.nodes)} primaries already runs "
                   f"for {project}{asked}; reusing it")
    click.echo(cluster.url)
    for node in cluster.nodes:
        slots = f"{node.first_slot}-{node.last_slot}"
        click.echo(f"  node {node.index}  {node.address}  slots {slots:<11}  "
                   f"pid {node.pid or '?':<7}  bus port {node.bus_port}")
    # Unlike the embedded server, the nodes must reach each other over TCP. On stderr:
    # stdout is the URL and the nodes, for scripts.
    host = cluster.nodes[0].address.rpartition(":")[0]
    click.echo(f"streamq: the cluster listens on TCP ports of {host} (loopback, one per node "
               "plus its bus port), not only on unix sockets: any user or process of this "
               "machine can connect to it, with no password", err=True)


@click.command()
@click.option("--stop", is_flag=True, help="Stop the embedded server of this project.")
@click.option("--all", "all_", is_flag=True,
              help="With --stop: stop every embedded server that --list shows.")
@click.option("--list", "list_", is_flag=True,
              help="List every running embedded server of this user: project, URL, pid.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print JSON.")
@click.option("--cluster", "primaries", type=int, default=None, metavar="N",
              help="Start a local cluster of N primaries (3 to 9) on loopback ports, in the "
                   "background, and print its URL.")
def server(stop: bool, all_: bool, list_: bool, as_json: bool, primaries: int | None) -> None:
    """Run the embedded Valkey server of this project in the foreground.

    The project is the nearest directory, from here up, that holds .streamq/,
    pyproject.toml or .git (else this directory); its state is in .streamq/ there.

    With --cluster N: start a local Valkey cluster of N primaries instead, each on a
    127.0.0.1 port with its state in .streamq/cluster/, and print its URL and nodes;
    with one running already, print those of that one.

    \b
    Example:
      streamq server             # state in .streamq/ (0700), unix socket only (0600), AOF on
      streamq server --cluster 3 # a 3-primary cluster, in the background
      streamq server --list      # every embedded server running on this machine (yours)
      streamq server --stop      # stop this project's server and cluster (the data stays)
    """
    if primaries is not None:
        from ..server.localcluster import MAX_PRIMARIES, MIN_PRIMARIES

        if stop or list_ or all_ or as_json:
            raise click.UsageError("--cluster goes with no other option")
        if not MIN_PRIMARIES <= primaries <= MAX_PRIMARIES:
            raise click.UsageError(
                f"--cluster takes {MIN_PRIMARIES} to {MAX_PRIMARIES} primaries, not {primaries} "
                f"(a cluster needs at least {MIN_PRIMARIES} primaries for a majority)")
        _start_cluster(primaries)
        return
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
        for where in dict.fromkeys(s.project for s in servers):  # a server and a cluster
            _stop(where)
        return
    from ..server import embedded

    sys.exit(embedded.run_server_foreground())
