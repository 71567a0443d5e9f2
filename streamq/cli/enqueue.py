"""``streamq enqueue``: enqueue a task by name from the shell.

Before sending, the name is checked against the task names the live workers
registered (``streamq.server.registry``), since a name no worker knows is handed back
and then dead-lettered: when workers are live and none has the name, the command
refuses (exit 2) unless ``--force``; when no worker is live at all it warns and
enqueues (workers often start after their tasks were sent: a deploy, a cron job).
"""

from __future__ import annotations

import difflib
import json

import click

from ..api.app import StreamQ
from ..base.errors import ConfigurationError
from .common import app_from_options, url_option


@click.command()
@click.argument("task_name")
@click.argument("args_json", required=False, default="[]")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as JSON.")
@click.option("--queue", default=None, help="Queue (default: the task's, or the default).")
@click.option("--countdown", type=click.FloatRange(0), default=None, help="Delay in seconds.")
@click.option("--force", is_flag=True,
              help="Enqueue even when no live worker has registered TASK_NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def enqueue(task_name: str, args_json: str, kwargs_json: str, queue: str | None,
            countdown: float | None, force: bool, as_json: bool, url: str | None,
            namespace: str | None, app_spec: str | None) -> None:
    """Enqueue TASK_NAME with ARGS_JSON (a JSON list) from the shell; prints its id.

    With --app the name and the arguments are checked against the module's tasks;
    without it the message is enqueued by name as given.

    The name is also checked against the task names the live workers registered:
    when workers are live and none of them has it (a typo, a worker not yet
    deployed), nothing is sent and the exit code is 2, unless --force. When no
    worker is live at all, a warning says so and the task is enqueued: it waits
    until a worker starts.

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
    task = app.registry.get(task_name)
    if app_spec and task is None:
        known = ", ".join(sorted(app.registry)) or "none"
        raise ConfigurationError(f"unknown task {task_name!r} in {app_spec} (known: {known})")
    if task is not None:
        try:  # the arguments against its signature, before asking the server anything
            task.prepare(tuple(args), kwargs, countdown=countdown, queue=queue)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
    target = queue or (task.options.queue if task is not None else app.settings.default_queue)
    _check_workers(app, task_name, target, force)
    res = app.send_by_name(task_name, args, kwargs, queue=queue, countdown=countdown)
    click.echo(json.dumps({"id": res.id, "status": res.status}) if as_json else res.id)


def _check_workers(app: StreamQ, name: str, queue: str, force: bool) -> None:
    """Refuse (unless ``force``) a name no live worker registered; warn of a queue no
    live worker reads."""
    workers = app.server.registry.live_workers(3, app.settings.heartbeat_s)
    where = f"on {app.server.masked_url}"
    if app.settings.namespace != "streamq":
        where += f" (namespace {app.settings.namespace!r})"
    if not workers:
        _warn(f"no live worker {where}; task {name!r} waits in queue {queue!r} until one "
              f"that has it starts")
        return
    having = [w for w in workers if w.tasks is None or name in w.tasks]
    if not having:
        if force:
            _warn(f"no live worker {where} has registered task {name!r}: it is handed back, "
                  f"then dead-lettered unless a worker that has it starts; enqueued anyway "
                  f"(--force)")
            return
        known = sorted(set().union(*(w.tasks or () for w in workers)))
        close = difflib.get_close_matches(name, known, 1)
        hint = f"did you mean {close[0]!r}?" if close else f"they have: {_listed(known)}."
        raise ConfigurationError(
            f"no live worker {where} has registered task {name!r}, so nothing was sent (it "
            f"would be handed back, then dead-lettered); {hint} Pass --force to enqueue it "
            f"anyway")
    if not any(queue in w.queues for w in having):
        _warn(f"no live worker that has task {name!r} reads queue {queue!r} "
              f"(they read {_listed(sorted({q for w in having for q in w.queues}))}); it "
              f"waits there until one does")


def _listed(names: list[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "") \
        if names else "none"


def _warn(text: str) -> None:
    click.echo(f"streamq: warning: {text}", err=True)

