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
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
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
    queues = Fitted("queues", ("queue", "backlog", "pending", "scheduled", "dead", "consumers",
                               "oldest", "done/min", "memory"))
    for q in status["queues"]:
        age = q["oldest_pending_age_s"]
        gone = q.get("dead_consumers") or 0
        consumers = Text(str(q["consumers"]))
        if gone:
            consumers.append(f" ({gone} dead)", style="bold red")
        # Names as Text, not markup: a "[" in a queue name is shown as it is.
        name = Text(q["queue"])
        if q.get("partitions"):
            name.append(f" ({q['partitions']} partitions)", style="dim")
        elif q.get("partition_of"):
            name = Text("  " + q["queue"], style="dim")
        queues.add(name, str(q["backlog"]), str(q["pending"]), str(q["scheduled"]),
                   Text(str(q["dead"]), style="yellow" if q["dead"] else ""), consumers,
                   "-" if age is None else _duration(age), str(round(q["throughput_per_min"])),
                   _bytes(q["stream_memory_bytes"]))
    workers = Fitted("workers", ("worker", "state", "procs", "queues", "ok", "failed",
                                 "retried", "dead", "up", "heartbeat"), left=(1, 3))
    for w in status["workers"]:
        state = Text("alive", style="green") if w["alive"] else Text("dead", style="bold red")
        up = _duration((now_ms - w["started_ms"]) / 1000) if w["started_ms"] else "-"
        workers.add(Text(w["id"]), state, str(w["processes"] or "-"),
                    Text(",".join(w["queues"]) or "-"), str(w["succeeded"]), str(w["failed"]),
                    str(w["retried"]), str(w["dead"]), up,
                    _duration((now_ms - w["last_heartbeat_ms"]) / 1000) + " ago")
    parts: list[Any] = [line, queues, workers]
    if status.get("consumers"):
        parts.append(_consumers(status["consumers"]))
    return Group(*parts)


def _consumers(consumers: list[dict[str, Any]]) -> Fitted:
    """Each consumer of each queue's group, and whether its worker is alive: the
    consumers of a dead (or stopped) worker hold messages until they are reclaimed."""
    table = Fitted("consumers", ("consumer", "queue", "pending", "idle", "state"),
                   left=(1, 4))
    for c in consumers:
        alive = c["worker_alive"]
        state = Text("alive", style="green") if alive else \
            Text("dead worker", style="bold red") if alive is False else \
            Text("not a streamq worker", style="dim")
        table.add(Text(c["name"]), Text(c["queue"]), str(c["pending"]),
                  _duration(c["idle_s"]), state)
    return table


class Fitted:
    """A titled table of named rows, drawn as a table where its natural width fits,
    else as one block a row: the row's name, then ``label value`` pairs packed into
    lines of the width. So a narrow terminal never cuts a name or a figure short."""

    def __init__(self, title: str, columns: tuple[str, ...], left: tuple[int, ...] = ()
                 ) -> None:
        self.title, self.columns, self.left = title, columns, left
        self.rows: list[tuple[Text, ...]] = []

    def add(self, *cells: str | Text) -> None:
        self.rows.append(tuple(c if isinstance(c, Text) else Text(c) for c in cells))

    def table(self) -> Table:
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD)
        table.add_column(self.columns[0], no_wrap=True)
        for i, column in enumerate(self.columns[1:], 1):
            table.add_column(column, justify="left" if i in self.left else "right",
                             no_wrap=True)
        for row in self.rows or [(Text("(none)"),) + (Text(""),) * (len(self.columns) - 1)]:
            table.add_row(*row)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table()
        if not self.rows or Measurement.get(console, options.update(width=UNWRAPPED),
                                            table).maximum <= options.max_width:
            yield table
            return
        yield Text(self.title, style="italic")
        for row in self.rows:
            name = row[0].copy()
            name.stylize("bold")
            yield Text("  ").append_text(name)  # a long name wraps
            line, width = Text("    "), 4
            for label, value in zip(self.columns[1:], row[1:], strict=True):
                pair = Text.assemble((label, "dim"), " ", value)
                if width > 4 and width + 3 + pair.cell_len > options.max_width:
                    yield line
                    line, width = Text("    "), 4
                if width > 4:
                    line.append("   ")
                    width += 3
                line.append_text(pair)
                width += pair.cell_len
            yield line
        yield Text("")


UNWRAPPED = 100_000
"""The width a table is measured in for its natural width."""


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
