"""``streamq dead``: list, requeue and purge dead letters."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator

import click
from rich.cells import cell_len
from rich.console import Console
from rich.padding import Padding
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ..server.deadletters import DeadLetter
from .common import app_from_options, stdout_console, url_option
from .humanize import duration


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
    """Show dead letters: reason, task, attempts and age. A table where it fits with
    the reasons wrapped (off a terminal: one line a letter), else one block a letter.

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
    render_letters(letters, stdout_console())


REASON_MIN_WIDTH = 30
"""The narrowest reason column of the table form; narrower, letters print as blocks."""


def _reason(letter: DeadLetter) -> tuple[str, int]:
    """The first line of a letter's reason (whole) and how many lines follow it (a
    failure's traceback)."""
    lines = letter.reason.splitlines() or [""]
    return lines[0], len(lines) - 1


def render_letters(letters: list[DeadLetter], console: Console, *,
                   now_ms: int | None = None) -> None:
    """Dead letters as a table when it fits ``console`` with each reason wrapped in
    ``REASON_MIN_WIDTH`` columns or more, else as one block a letter. Nothing is cut."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    header = ("entry", "queue", "task", "task id", "attempts", "deliveries", "age")
    rows = [(d.entry_id, d.queue, d.task, d.task_id, str(d.attempts), str(d.deliveries),
             duration((now - d.at_ms) / 1000)) for d in letters]
    widths = [max(cell_len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    # Each column takes a border and a space either side; the reason the rest.
    if sum(widths) + REASON_MIN_WIDTH + 3 * (len(header) + 1) + 1 <= console.width:
        table = Table(*header, "reason", title=f"dead letters ({len(letters)})",
                      title_justify="left")
        for column in table.columns[:-1]:
            column.no_wrap = True
        for d, cells in zip(letters, rows, strict=True):
            # Text, not markup: a reason such as "KeyError: [user]" is shown as it is.
            table.add_row(*(Text(c) for c in cells), Text(_reason(d)[0]))
        console.print(table)
        return
    console.print(Text(f"dead letters ({len(letters)}), oldest first", style="bold"))
    for d in letters:
        first, more = _reason(d)
        head = Text.assemble((d.entry_id, "bold"), "  ", Text(d.queue), "  ",
                             f"{duration((now - d.at_ms) / 1000)} ago")
        block = Table.grid(padding=(0, 2))
        block.add_column(no_wrap=True, style="dim")
        block.add_column(overflow="fold")
        block.add_row("task", Text(d.task))
        block.add_row("task id", Text(d.task_id))
        block.add_row("attempts", f"{d.attempts} (deliveries {d.deliveries})")
        block.add_row("reason", Text(first, style="red"))
        if more and d.task_id:
            block.add_row("traceback", Text(f"{more} lines: streamq result {d.task_id}",
                                            style="dim"))
        console.print()
        console.print(head)
        console.print(Padding(block, (0, 0, 0, 2)))


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
@click.option("--all", "all_", is_flag=True, help="Purge the dead letters of every queue.")
@click.option("--yes", "-y", is_flag=True,
              help="Do not ask for confirmation (needed when stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def dead_purge(queue: str | None, all_: bool, yes: bool, as_json: bool, url: str | None,
               namespace: str | None, app_spec: str | None) -> None:
    """Delete the dead letters of QUEUE, or of every queue with --all. Asks first on a
    terminal; elsewhere (a script, a pipe) it needs --yes.

    \b
    Example:
      streamq dead purge default
      streamq dead purge --all --yes
    """
    if queue and all_:
        raise click.UsageError("name one queue or pass --all, not both")
    if not queue and not all_:
        raise click.UsageError("name the queue to purge, or pass --all for every queue")
    if not yes and not sys.stdin.isatty():
        raise click.UsageError("purging deletes dead letters for good: pass --yes to "
                               "confirm (stdin is not a terminal to ask on)")
    app = app_from_options(url, namespace, app_spec, start_server=False)
    where = f"queue {queue}" if queue else "every queue"
    if not yes:
        queues = [queue] if queue else app.server.broker.queues()
        n = sum(app.dead.count(q) for q in queues)
        if n == 0:
            click.echo(json.dumps({"purged": 0}) if as_json else f"no dead letters in {where}")
            return
        if not click.confirm(f"Delete {n} dead letter(s) of {where} for good?", err=True):
            click.echo("nothing purged", err=True)
            sys.exit(1)
    n = app.dead.purge(queue)
    click.echo(json.dumps({"purged": n}) if as_json else f"purged {n} dead letter(s) of {where}")
