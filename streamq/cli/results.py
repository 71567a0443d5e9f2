"""``streamq result``: a task's stored record."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table
from rich.text import Text

from ..base.errors import StreamQError
from ..data import record
from ..data.record import Status
from .common import app_from_options, stdout_console, url_option


@click.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def result(task_id: str, as_json: bool, url: str | None, namespace: str | None,
           app_spec: str | None) -> None:
    """Show the stored record of a task.

    \b
    Example:
      streamq result 3f2a9c0e6b7d4f7c9a1e2b3c4d5e6f70@default --json
    """
    app = app_from_options(url, namespace, app_spec, start_server=False)
    res = app.AsyncResult(task_id)
    try:
        info = res.info
    except StreamQError as exc:  # e.g. a result this process cannot decode
        raise StreamQError(f"cannot read the result of {task_id}: {exc}") from None
    status = info.get(record.STATUS, Status.UNKNOWN.value)
    info = {"id": task_id, record.STATUS: status, **info}
    if as_json:
        click.echo(json.dumps(info, indent=2, default=repr))
        sys.exit(0 if status != Status.UNKNOWN else 1)
    if status == Status.UNKNOWN:
        raise StreamQError(f"no record for task {task_id} (never enqueued, forgotten or expired)")
    tb = info.pop(record.TRACEBACK, "")
    table = Table(show_header=False, title=Text(f"task {task_id}"))
    for k, v in info.items():
        table.add_row(k, Text(repr(v) if k == record.RESULT else str(v)))
    console = stdout_console()
    console.print(table)
    if tb:
        # Never wrapped: a traceback is read by tools (grep, editors) as much as by eye.
        console.print(tb, markup=False, emoji=False, soft_wrap=not console.is_terminal)
