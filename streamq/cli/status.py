"""``streamq status``: queues, workers and what is stuck, once or ``--watch``-ed.

The figures come from ``streamq.server.status.collect_status`` (a JSON-able dict);
this module only draws them with rich.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import click
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..api.app import StreamQ
from ..base.errors import StreamQError
from ..server.status import collect_status
from .common import app_from_options, stdout_console, url_option


@click.command()
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
    app = app_from_options(url, namespace, app_spec, start_server=False)
    try:
        doc = _collect(app)  # errors here end the command with one line
        # Off a terminal (a file or a pipe) nothing is squeezed or wrapped.
        console = stdout_console()
        if not watch:
            if as_json:
                click.echo(json.dumps(doc, indent=2, sort_keys=True))
            else:
                render_status(doc, console)
            return
        _watch(app, doc, interval, as_json, console)
    finally:
        app.close()


def _collect(app: StreamQ) -> dict[str, Any]:
    return collect_status(app.server.connection, app.settings)


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


def _watch(app: StreamQ, doc: dict[str, Any], interval: float, as_json: bool,
           console: Console) -> None:
    from rich.live import Live

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


def _refresh(app: StreamQ, last: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    try:
        return _collect(app), None
    except StreamQError as exc:
        return last, str(exc)


# -- rendering ---------------------------------------------------------------------------
def render_status(status: dict[str, Any], console: Console) -> None:
    """Print ``status`` as a server line and tables of queues and workers."""
    console.print(status_renderable(status))


def status_renderable(status: dict[str, Any], *, now: float | None = None) -> Any:
    """The rich renderable ``render_status`` prints (``--watch`` refreshes it)."""
    now_ms = int((time.time() if now is None else now) * 1000)
    srv = status["server"]
    line = Text.assemble(("server ", "bold"), srv["url"], f"  {srv['name']} {srv['version']}",
                         f"  memory {srv['used_memory_human']}",
                         f"  maxmemory-policy {srv['maxmemory_policy'] or 'unknown'}")
    if srv["eviction_risk"]:
        line.append("  (may evict queued tasks: set noeviction)", style="bold red")
    queues = _table("queues", "queue", "backlog", "pending", "scheduled", "dead", "consumers",
                    "oldest", "done/min", "memory")
    for q in status["queues"]:
        age = q["oldest_pending_age_s"]
        # Names as Text, not markup: a "[" in a queue name is shown as it is.
        queues.add_row(Text(q["queue"]), str(q["backlog"]), str(q["pending"]),
                       str(q["scheduled"]),
                       Text(str(q["dead"]), style="yellow" if q["dead"] else ""),
                       str(q["consumers"]), "-" if age is None else _duration(age),
                       f"{q['throughput_per_min']:g}", _bytes(q["stream_memory_bytes"]))
    if not status["queues"]:
        queues.add_row("(none)", *[""] * 8)
    workers = _table("workers", "worker", "state", "procs", "queues", "ok", "failed", "retried",
                     "dead", "up", "heartbeat")
    for w in status["workers"]:
        state = Text("alive", style="green") if w["alive"] else Text("dead", style="bold red")
        up = _duration((now_ms - w["started_ms"]) / 1000) if w["started_ms"] else "-"
        workers.add_row(Text(w["id"]), state, str(w["processes"] or "-"),
                        Text(",".join(w["queues"])), str(w["succeeded"]), str(w["failed"]),
                        str(w["retried"]), str(w["dead"]), up,
                        _duration((now_ms - w["last_heartbeat_ms"]) / 1000) + " ago")
    if not status["workers"]:
        workers.add_row("(none)", *[""] * 9)
    return Group(line, queues, workers)


def _table(title: str, name: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    # On a narrow terminal long names fold rather than figures being cut short.
    table.add_column(name, overflow="fold")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    return table


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns
