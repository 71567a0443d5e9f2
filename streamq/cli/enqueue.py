"""``streamq enqueue``: enqueue a task by name from the shell."""

from __future__ import annotations

import json

import click

from ..base.errors import ConfigurationError
from .common import app_from_options, url_option


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
