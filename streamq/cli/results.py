"""``streamq result``: a task's stored record, laid out for a reader (``--json``: for
a program, every field as stored)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..api.app import StreamQ
from ..base.errors import StreamQError
from ..data import record, serialization
from ..data.message import Message
from ..data.record import Status
from ..server.lookup import find_message
from .common import app_from_options, stdout_console, url_option
from .humanize import duration, when

STYLES = {Status.SUCCESS: "green", Status.FAILURE: "bold red", Status.DEAD: "bold red",
          Status.RETRY: "yellow"}
SHOWN = frozenset({record.STATUS, record.TASK, record.QUEUE, record.RETRIES,
                   record.DELIVERIES, record.ENQUEUED_MS, record.ETA_MS, record.STARTED_MS,
                   record.FINISHED_MS, record.RUNTIME_MS, record.DEAD_AT_MS, record.WORKER,
                   record.RESULT, record.EXC_TYPE, record.EXC_MESSAGE, record.TRACEBACK,
                   record.REASON})
"""Fields given a row of their own; any other is listed under its stored name."""


@click.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@url_option
def result(task_id: str, as_json: bool, url: str | None, namespace: str | None,
           app_spec: str | None) -> None:
    """Show the stored record of a task: status, result or error, arguments (while its
    message exists), attempts, worker, times.

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
    if status != Status.UNKNOWN:
        info.update(_arguments(app, task_id, info))
    if as_json:
        click.echo(json.dumps(info, indent=2, default=repr))
        sys.exit(0 if status != Status.UNKNOWN else 1)
    if status == Status.UNKNOWN:
        raise StreamQError(f"no record for task {task_id} (never enqueued, forgotten or expired)")
    render_result(info, stdout_console())


def _arguments(app: StreamQ, task_id: str, info: dict[str, Any]) -> dict[str, Any]:
    """``args`` and ``kwargs`` from the task's message while it exists; else
    ``args_note``, saying why there are none."""
    queue = str(info.get(record.QUEUE) or "")
    found = find_message(app.server.connection, app.settings.namespace, queue, task_id, info) \
        if queue else None
    if found is None:
        gone = info[record.STATUS] == Status.SUCCESS
        return {"args_note": "not kept: a task's message is deleted once it succeeded" if gone
                else "its message was not found (purged, or moved since)"}
    try:
        msg = Message.decode(found.raw)
        args, kwargs = serialization.loads(msg.body, msg.content_type, msg.content_encoding,
                                           accept=app.accept_content_types)
        return {"args": list(args), "kwargs": dict(kwargs)}
    except (StreamQError, TypeError, ValueError) as exc:
        return {"args_note": f"its message (in {found.where}) does not decode here: {exc}"}


def _attempt_of_error(info: dict[str, Any]) -> int:
    """The attempt whose error the record holds: a retry records the failed attempt's
    number (``retries``); a hand-back (an unknown task) counts no attempt."""
    retries = int(info.get(record.RETRIES) or 0)
    return retries + 1 if info.get(record.EXC_TYPE) == "TaskNotRegisteredError" else retries


def result_rows(info: dict[str, Any], *, now_ms: int | None = None
                ) -> tuple[list[tuple[str, Text]], str, str]:
    """(label, value) rows of a record in reading order, and its traceback with the
    label it is printed under ("" when it has none)."""
    status = info[record.STATUS]
    retries = int(info.get(record.RETRIES) or 0)
    rows: list[tuple[str, Text]] = []

    def row(label: str, value: Any, style: str = "") -> None:
        if value is not None and value != "":
            rows.append((label, Text(str(value), style=style)))

    def at(field: str) -> str | None:
        ms = info.get(field)
        return when(int(ms), now_ms) if isinstance(ms, int) and ms > 0 else None

    row("id", info["id"])
    row("task", info.get(record.TASK))
    row("queue", info.get(record.QUEUE))
    row("status", status, STYLES.get(status, ""))
    error = f"{info.get(record.EXC_TYPE)}: {info.get(record.EXC_MESSAGE, '')}" \
        if info.get(record.EXC_TYPE) else None
    attempt = _attempt_of_error(info)
    tb_label = ""
    if status == Status.SUCCESS:
        row("result", repr(info.get(record.RESULT)))
    if status == Status.DEAD:
        row("reason", info.get(record.REASON), "red")
    if error and status == Status.FAILURE:
        row("error", error, "red")
        tb_label = "traceback"
    elif error and status == Status.RETRY:
        row(f"error (attempt {attempt})", error, "yellow")
        tb_label = f"traceback (attempt {attempt})"
    elif error:  # a success, or a run in progress, after a failed attempt
        row(f"earlier error (attempt {attempt})", error)
        tb_label = f"earlier traceback (attempt {attempt})"
    if "args" in info:
        row("args", repr(info["args"]))
        row("kwargs", repr(info["kwargs"]))
    else:
        row("args", f"({info.get('args_note', 'unknown')})", "dim")
    ran = retries if status in (Status.RETRY, Status.PENDING, Status.SCHEDULED) else retries + 1
    row("attempts", ran)
    row("deliveries", info.get(record.DELIVERIES))
    row("worker", info.get(record.WORKER))
    row("enqueued", at(record.ENQUEUED_MS))
    if status in (Status.PENDING, Status.SCHEDULED, Status.RETRY):
        row("next attempt" if status == Status.RETRY else "due", at(record.ETA_MS))
    row("started", at(record.STARTED_MS))
    runtime = info.get(record.RUNTIME_MS)
    finished = info.get(record.FINISHED_MS)
    if status == Status.SUCCESS and finished is None and isinstance(runtime, int) and \
            isinstance(info.get(record.STARTED_MS), int):
        finished = info[record.STARTED_MS] + runtime  # a success stores its run time only
    if status in record.FINAL and isinstance(finished, int):
        row("finished", when(finished, now_ms))
    if status == Status.DEAD:
        row("dead since", at(record.DEAD_AT_MS))
    if isinstance(runtime, int) and status == Status.SUCCESS:
        # Stored in whole milliseconds.
        row("runtime", duration(runtime / 1000) if runtime else "< 1 ms")
    elif isinstance(finished, int) and isinstance(info.get(record.STARTED_MS), int) and \
            status == Status.FAILURE:
        row("runtime", duration((finished - info[record.STARTED_MS]) / 1000))
    if info.get(record.RESULT_CT, serialization.JSON_CONTENT_TYPE) != \
            serialization.JSON_CONTENT_TYPE or info.get(record.RESULT_CE):
        row("result type", " ".join(str(info.get(f) or "")
                                     for f in (record.RESULT_CT, record.RESULT_CE)).strip())
    for k, v in info.items():
        if k not in SHOWN and k not in ("id", "args", "kwargs", "args_note",
                                        record.RESULT_CT, record.RESULT_CE):
            row(k, v)
    tb = str(info.get(record.TRACEBACK) or "")
    return rows, tb, tb_label if tb else ""


def render_result(info: dict[str, Any], console: Console, *, now_ms: int | None = None
                  ) -> None:
    """Print a record (``info``: ``id``, the stored fields, and ``args``/``kwargs``
    or ``args_note``) as a table, then its traceback under its label."""
    rows, tb, tb_label = result_rows(info, now_ms=now_ms)
    table = Table(show_header=False, title=Text(f"task {info['id']}"), title_justify="left")
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    if tb:
        console.print(Text(f"{tb_label}:", style="bold"))
        # Never wrapped: a traceback is read by tools (grep, editors) as much as by eye.
        console.print(tb, markup=False, emoji=False, soft_wrap=not console.is_terminal,
                      highlight=False)
