"""Operations commands: dead letters, results, enqueue by name, and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .cli import app_from_options, cli, load_app, url_option
from .errors import ConfigurationError, StreamQError


def _console() -> Console:
    return Console(stderr=False, highlight=False)


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


# -- dead letters --------------------------------------------------------------------------
@cli.group()
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
    app = app_from_options(url, namespace, app_spec)
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
        table.add_row(d.entry_id, d.queue, d.task, d.task_id, str(d.attempts),
                      str(d.deliveries), f"{doc['age_s']}s", d.reason.splitlines()[0][:120])
    _console().print(table)


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
    app = app_from_options(url, namespace, app_spec)
    total = len(entry_ids) if entry_ids else sum(
        app.dead.count(q) for q in ([queue] if queue else app.broker.queues()))
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
    app = app_from_options(url, namespace, app_spec)
    n = app.dead.purge(queue)
    click.echo(json.dumps({"purged": n}) if as_json else f"purged {n} dead letter(s)")


# -- results and enqueue ----------------------------------------------------------------------
@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def result(task_id: str, as_json: bool, url: str | None, namespace: str | None,
           app_spec: str | None) -> None:
    """Show the stored record of a task.

    \b
    Example:
      streamq result 3f2a9c0e6b7d4f7c9a1e2b3c4d5e6f70 --json
    """
    app = app_from_options(url, namespace, app_spec)
    res = app.AsyncResult(task_id)
    try:
        info = res.info
    except StreamQError as exc:  # e.g. a result this process cannot decode
        raise StreamQError(f"cannot read the result of {task_id}: {exc}") from None
    info = {"id": task_id, "status": info.get("status", "UNKNOWN"), **info}
    if as_json:
        click.echo(json.dumps(info, indent=2, default=repr))
        sys.exit(0 if info["status"] != "UNKNOWN" else 1)
    if info["status"] == "UNKNOWN":
        raise StreamQError(f"no record for task {task_id} (never enqueued, forgotten or expired)")
    tb = info.pop("traceback", "")
    table = Table(show_header=False, title=f"task {task_id}")
    for k, v in info.items():
        table.add_row(k, repr(v) if k == "result" else str(v))
    console = _console()
    console.print(table)
    if tb:
        console.print(tb, markup=False)


@cli.command()
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


# -- demo --------------------------------------------------------------------------------------
@cli.command()
@click.option("-n", "--count", type=click.IntRange(1, 100000), default=300, show_default=True)
def demo(count: int) -> None:
    """Start a 2-process worker on worker/tasks.py, run COUNT tasks, show results.

    \b
    Example:
      streamq demo -n 500
    """
    if not os.path.exists(os.path.join("worker", "tasks.py")):
        raise ConfigurationError("run `streamq demo` from the streamq checkout: it uses "
                                 "worker/tasks.py")
    app = load_app(["worker.tasks"])
    tasks = app.registry
    console = _console()
    url = app.broker.url  # starts the embedded server if nothing else is configured
    env = dict(os.environ, STREAMQ_URL=url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "streamq", "worker", "worker.tasks", "-c", "2",
         "--log-level", "ERROR"], env=env)
    try:
        t0 = time.perf_counter()
        calls = []
        with Progress(console=console, transient=False) as progress:
            bar = progress.add_task("enqueueing", total=count)
            for i in range(count):
                kind = i % 3
                if kind == 0:
                    calls.append(("add", (i, i), tasks["worker.tasks.add"].delay(i, i)))
                elif kind == 1:
                    calls.append(("fib", (20,), tasks["worker.tasks.fib"].delay(20)))
                else:
                    text = f"streamq demo task number {i}"
                    calls.append(("word_count", (text,),
                                  tasks["worker.tasks.word_count"].delay(text)))
                progress.advance(bar)
            t_enq = time.perf_counter() - t0
            done = progress.add_task("waiting for results", total=count)
            values = []
            failed = 0
            for name, args, res in calls:
                try:
                    values.append((name, args, res.get(timeout=60)))
                except StreamQError:
                    failed += 1
                progress.advance(done)
        elapsed = time.perf_counter() - t0
        table = Table("task", "arguments", "result", title="a few results")
        for name, args, value in values[:6]:
            table.add_row(name, repr(args), repr(value))
        console.print(table)
        console.print(f"[bold]{len(values)} succeeded, {failed} failed[/] of {count} tasks in "
                      f"{elapsed:.2f}s (enqueue {t_enq:.2f}s, {count / elapsed:.0f} tasks/s "
                      f"end to end) on 2 worker processes at {app.broker.masked_url}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    if failed:
        sys.exit(1)
