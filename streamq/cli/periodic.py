"""``streamq periodic``: the schedules the code defines and the server knows, with their
last and next run and their state; ``--forget NAME`` drops a retired one now."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.text import Text

from ..api.app import StreamQ
from ..api.periodic import every_text, schedules
from ..base.errors import ConfigurationError, StreamQError
from ..server.periodic import RETIRE_AFTER_S, TAKEOVER_AFTER_MS, PeriodicStore
from .common import app_from_options, stdout_console, url_option
from .humanize import relative, when
from .status import Fitted

STYLES = {"active": "green", "retired": "yellow", "no worker": "bold red", "idle": "yellow",
          "changed": "yellow", "new": "dim"}
STATES = {
    "active": "a worker of this definition touched it within the last minute",
    "no worker": "defined here, but no worker touched it within the last minute",
    "new": "defined here; no worker has started it yet (first tick: the next one after "
           "a worker starts)",
    "changed": "defined otherwise here: workers of the definition in force run it until "
               "none is left, then this one starts over",
    "retired": "the server knows it but this code does not define it; it is forgotten "
               "a day after a worker last touched it (or now: --forget NAME)",
    "idle": "no worker touched it within the last minute (retired, or no worker up); "
            "give --app to compare with the code",
}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--forget", metavar="NAME", default=None,
              help="Remove a retired schedule's state from the server now.")
@url_option
def periodic(as_json: bool, forget: str | None, url: str | None, namespace: str | None,
             app_spec: str | None) -> None:
    """List the periodic schedules: name, task, queue, when, last run (time and task
    id), next run and state. With --app, the code's schedules are compared with the
    server's: one the server knows and the code no longer defines is retired.

    \b
    Example:
      streamq periodic --app myproject.tasks
      streamq periodic --app myproject.tasks --forget old-report
    """
    app = app_from_options(url, namespace, app_spec, start_server=False)
    try:
        store = PeriodicStore(app.server.transport, app.settings.namespace)
        if forget is not None:
            _forget(app, store, forget, app_spec)
            return
        doc = collect(app, store, app_spec is not None)
        if as_json:
            click.echo(json.dumps(doc, indent=2, sort_keys=True))
        else:
            render(doc)
    finally:
        app.close()


def _forget(app: StreamQ, store: PeriodicStore, name: str, app_spec: str | None) -> None:
    if name in schedules(app):
        raise ConfigurationError(
            f"schedule {name!r} is still defined by {app_spec}: a worker would start it "
            f"over; remove it from the code first")
    if not store.forget(name):
        raise StreamQError(f"the server knows no schedule named {name!r}")
    click.echo(f"forgot schedule {name!r} (a worker whose code still defines it starts it "
               f"over)")


def collect(app: StreamQ, store: PeriodicStore, with_code: bool) -> dict[str, Any]:
    """Every schedule, as JSON-able dicts, sorted by name."""
    now = store.server_ms()
    known = store.known()
    defined = schedules(app)
    rows = []
    for name in sorted(set(known) | set(defined)):
        state, code = known.get(name), defined.get(name)
        spec = (state or {}).get("spec") or {}
        row: dict[str, Any] = {
            "name": name, "task": code.task.name if code else spec.get("task"),
            "queue": code.queue if code else (state or {}).get("queue"),
            "cron": code.cron if code else spec.get("cron"),
            "every_s": (code.spec() if code else spec).get("every_s"),
            "tz": code.tz if code else spec.get("tz"),
            "when": code.when if code else _when(spec),
            "last_run": None, "next_ms": None, "fired": 0, "skipped": 0, "last_skip": None}
        if state:
            if state.get("last_tick") is not None:
                row["last_run"] = {"tick_ms": state["last_tick"], "at_ms": state.get("last_at"),
                                   "id": state.get("last_id")}
            row.update(fired=state.get("fired") or 0, skipped=state.get("skipped") or 0,
                       seen_ms=state.get("seen"))
            if state.get("last_skip"):
                row["last_skip"] = {"tick_ms": state.get("last_skip_tick"),
                                    "why": state["last_skip"]}
        if state is None:
            assert code is not None
            row.update(state="new", next_ms=code.next_after(now))
            rows.append(row)
            continue
        fresh = (state.get("seen") or 0) > now - TAKEOVER_AFTER_MS
        if code is None:
            row["state"] = "retired" if with_code else "active" if fresh else "idle"
            # Each touch refreshed its TTL; a worker that still defines it touches it.
            row["expires_ms"] = (state.get("seen") or now) + RETIRE_AFTER_S * 1000
        elif state.get("version") != code.version:
            row["state"] = "changed"  # its next tick is the new definition's, once it starts
        else:
            row["state"] = "active" if fresh else "no worker"
        if row["state"] != "changed":
            row["next_ms"] = state.get("next")
        rows.append(row)
    return {"server_time_ms": now, "schedules": rows}


def _when(spec: dict[str, Any]) -> str:
    if spec.get("every_s") is not None:
        return every_text(spec["every_s"])
    if spec.get("cron"):
        tz = spec.get("tz") or "UTC"
        return f"cron {spec['cron']}" + ("" if tz == "UTC" else f" ({tz})")
    return "-"


def render(doc: dict[str, Any]) -> None:
    console = stdout_console()
    now = doc["server_time_ms"]
    table = Fitted("periodic schedules", ("schedule", "task", "queue", "when", "last run",
                                          "next run", "state"), left=tuple(range(1, 7)))
    for row in doc["schedules"]:
        last = row["last_run"]
        last_text = Text("-")
        if last is not None:
            ago = relative(last["at_ms"] or last["tick_ms"], now)
            last_text = Text.assemble("just now" if ago == "now" else ago, " ",
                                      (str(last["id"]), "dim"))
        nxt = row["next_ms"]
        # A tick that is due with no worker up runs when one starts (catch-up).
        next_text = "-" if nxt is None else when(nxt, now) + (", due" if nxt <= now else "")
        table.add(Text(row["name"]), Text(str(row["task"] or "-")), Text(str(row["queue"])),
                  Text(row["when"]), last_text, Text(next_text),
                  Text(row["state"], style=STYLES.get(row["state"], "")))
    console.print(table)
    shown = sorted({row["state"] for row in doc["schedules"]})
    for state in shown:
        console.print(Text.assemble((f"{state}: ", "bold"), STATES[state]))
