"""``streamq status``: queues, workers and what is stuck (registered on ``streamq.cli.cli``)."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from .cli import app_from_options, cli, url_option
from .errors import StreamQError
from .status import collect_status, render_status, status_renderable


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (sorted keys); with --watch, one line per refresh.")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              metavar="S", help="Seconds between refreshes with --watch.")
@url_option
def status(as_json: bool, watch: bool, interval: float, url: str | None, namespace: str | None,
           app_spec: str | None) -> None:
    """Show the server, every queue (backlog, in flight, scheduled, dead letters,
    oldest pending, tasks done per minute) and every worker (alive or dead).

    \b
    Example:
      streamq status
      streamq status --watch --interval 1
      streamq status --json --namespace myapp
    """
    from rich.console import Console

    app = app_from_options(url, namespace, app_spec)
    try:
        doc = collect_status(app)  # errors here end the command with one line
        console = Console(highlight=False)
        if not console.is_terminal:  # a file or a pipe: no reason to squeeze to 80 columns
            console.width = max(console.width, 160)
        if not watch:
            if as_json:
                click.echo(json.dumps(doc, indent=2, sort_keys=True))
            else:
                render_status(doc, console)
            return
        _watch(app, doc, interval, as_json, console)
    finally:
        app.close()


@contextlib.contextmanager
def _until_interrupted() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) or SIGTERM, which is how a watch ends (exit 0).

    A handler that only sets a flag never interrupts a half-written refresh, as a
    KeyboardInterrupt raised anywhere in rendering would."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals only reach the main thread; nothing to install
        return
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _watch(app: Any, doc: dict[str, Any], interval: float, as_json: bool, console: Any) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    if as_json:
        error: str | None = None
        with _until_interrupted() as stop:
            while True:
                if error:  # no stale line on stdout: a reader would take it as fresh
                    click.echo(f"streamq: warning: cannot refresh ({error}); retrying",
                               err=True)
                else:
                    click.echo(json.dumps(doc, sort_keys=True))
                if stop.wait(interval):
                    return
                doc, error = _refresh(app, doc)

    def view(d: dict[str, Any], error: str | None) -> Any:
        head = Text(f"{time.strftime('%H:%M:%S')}  every {interval:g}s, Ctrl-C to stop",
                    style="dim")
        parts = [head, status_renderable(d)]
        if error:
            # Keep showing the last figures: a watch should ride out a server blip.
            parts.append(Text(f"cannot refresh ({error}); showing the last figures, retrying",
                              style="bold red"))
        return Group(*parts)

    with _until_interrupted() as stop, \
            Live(view(doc, None), console=console, auto_refresh=False) as live:
        while not stop.wait(interval):
            doc, error = _refresh(app, doc)
            live.update(view(doc, error), refresh=True)


def _refresh(app: Any, last: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    try:
        return collect_status(app), None
    except StreamQError as exc:
        return last, str(exc)
