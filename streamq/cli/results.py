"""``streamq result`` (a task's stored record) and ``streamq enqueue`` (by name)."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table
from rich.text import Text

from ..base.errors import ConfigurationError, StreamQError
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
    app = app_from_options(url, namespace, app_spec)
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


@click.command()
@click.argument("task_name")
@click.argument("args_json", required=False, default="[]")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as JSON.")
@click.option("--queue", default=None, help="Queue (default: the task's, or the default).")
@click.option("--countdown", type=click.FloatRange(0), default=None, help="Delay in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def enqueue(task_name: str, args_json: str, kwargs_json: str, queue: str | None,
            countdown: float | None, as_json: bool, url: str | None, namespace: str | None,
            app_spec: str | None) -> None:
    """Enqueue TASK_NAME with ARGS_JSON (a JSON list) from the shell.

    With --app the name is checked against the module's tasks; without it the
    message is enqueued by name as given.

    \b
    Example:
      streamq enqueue worker.tasks.add '[2, 3]' --app worker.tasks
    """
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"arguments must be JSON: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.UsageError("ARGS_JSON must be a JSON list and --kwargs a JSON object")
    app = app_from_options(url, namespace, app_spec)
    if app_spec and task_name not in app.registry:
        known = ", ".join(sorted(app.registry)) or "none"
        raise ConfigurationError(f"unknown task {task_name!r} in {app_spec} (known: {known})")
    res = app.send_by_name(task_name, args, kwargs, queue=queue, countdown=countdown)
    click.echo(json.dumps({"id": res.id, "status": res.status}) if as_json else res.id)
