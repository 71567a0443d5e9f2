"""``streamq demo``: a 2-process worker on worker/tasks.py runs a few hundred tasks.

On the embedded server, the demo stops the server at the end if it started it, and
leaves one that was already running as it was (saying so): demos leave nothing behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..base.errors import ConfigurationError, StreamQError
from .common import leave_embedded, load_app


@click.command()
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
    console = Console(highlight=False)
    embedded = None
    if app.settings.url is None:  # nothing configured: the project's embedded server
        from ..server.embedded import resolve_embedded

        embedded = resolve_embedded()  # starts it unless it runs
        app.configure(url=embedded.url)
    url = app.server.url
    env = dict(os.environ, STREAMQ_URL=url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "streamq", "worker", "worker.tasks", "-c", "2",
         "--log-level", "ERROR"], env=env)
    try:
        t0 = time.perf_counter()
        calls: list[tuple[str, tuple[Any, ...], Any]] = []
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
                      f"end to end) on 2 worker processes at {app.masked_url}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        app.close()
        if embedded is not None:
            leave_embedded(embedded, console, "the demo")
    if failed:
        sys.exit(1)
