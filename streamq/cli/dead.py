"""``streamq dead``: list, requeue and purge dead letters."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator

import click
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from .common import app_from_options, stdout_console, url_option


@contextlib.contextmanager
def _progress(total: int, label: str, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """Yields an ``advance(n)`` for a rich progress bar on a terminal; None when quiet
    or not a tty."""
    if quiet or not sys.stdout.isatty():
        yield None
        return
    with Progress(transient=True) as bar:
        task_id = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task_id, n)


@click.group()
def dead() -> None:
    """List, requeue and purge dead letters.

    \b
    Example:
      streamq dead list default
      streamq dead requeue default --all
    """


@dead.command("list")
@click.argument("queue", required=False)
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def dead_list(queue: str | None, limit: int, as_json: bool, url: str | None,
              namespace: str | None, app_spec: str | None) -> None:
    """Show dead letters: reason, task, attempts and age.

    \b
    Example:
      streamq dead list emails --limit 20
    """
    app = app_from_options(url, namespace, app_spec, start_server=False)
    letters = app.dead.list(queue, limit=limit)
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters" + (f" in queue {queue}" if queue else ""))
        return
    table = Table("entry", "queue", "task", "task id", "attempts", "deliveries", "age",
                  "reason", title="dead letters")
    for d in letters:
        doc = d.as_dict()
        reason = d.reason.splitlines()[0][:120] if d.reason else ""
        # Text, not markup: a reason such as "KeyError: [user]" is shown as it is.
        table.add_row(d.entry_id, Text(d.queue), Text(d.task), Text(d.task_id),
                      str(d.attempts), str(d.deliveries), f"{doc['age_s']}s", Text(reason))
    stdout_console().print(table)


@dead.command("requeue")
@click.argument("queue", required=False)
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead letter of QUEUE.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def dead_requeue(queue: str | None, entry_ids: tuple[str, ...], all_: bool, as_json: bool,
                 url: str | None, namespace: str | None, app_spec: str | None) -> None:
    """Move dead letters back to their queue, retries reset.

    \b
    Example:
      streamq dead requeue default 1732240000000-0
      streamq dead requeue default --all
    """
    if not entry_ids and not all_:
        raise click.UsageError("name entry ids to requeue, or pass --all")
    app = app_from_options(url, namespace, app_spec, start_server=False)
    total = len(entry_ids) if entry_ids else sum(
        app.dead.count(q) for q in ([queue] if queue else app.server.broker.queues()))
    with _progress(total, "requeueing", as_json) as advance:
        n = app.dead.requeue(queue, entry_ids or None, progress=advance)
    click.echo(json.dumps({"requeued": n}) if as_json else f"requeued {n} message(s)")


@dead.command("purge")
@click.argument("queue", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def dead_purge(queue: str | None, as_json: bool, url: str | None, namespace: str | None,
               app_spec: str | None) -> None:
    """Delete the dead letters of QUEUE (of every queue when omitted).

    \b
    Example:
      streamq dead purge default
    """
    app = app_from_options(url, namespace, app_spec, start_server=False)
    n = app.dead.purge(queue)
    click.echo(json.dumps({"purged": n}) if as_json else f"purged {n} dead letter(s)")
