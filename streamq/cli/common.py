"""What the command modules share: logging set-up, finding the app, the URL options,
and the console that prints to stdout.

The CLI never reads ``STREAMQ_*`` variables itself: ``Settings.from_env`` does, when
an app is built. ``--url`` and ``--namespace`` only override what it found.
"""

from __future__ import annotations

import datetime
import importlib
import json
import logging
import logging.config
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from ..api.app import StreamQ, find_app
from ..base.errors import ConfigurationError
from ..worker.logs import TASK_FIELDS
from .importing import import_failed

if TYPE_CHECKING:
    from ..server.embedded import Resolved

UNWRAPPED_WIDTH = 1_000_000
"""The console width off a terminal: a file or a pipe gets every line whole (a
table is only as wide as its content, so nothing is padded to this)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``): ``ts`` (ISO 8601 in UTC,
    with milliseconds and the zone: ``2026-12-02T22:47:05.123+00:00``), ``level``,
    ``logger``, ``process``, ``pid``, ``message``, then the task fields a task's line
    carries (``streamq.worker.logs.TASK_FIELDS``: ``task_id``, ``task``, ``queue``,
    ``attempt``, ``runtime_s``, ...) and ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc: dict[str, Any] = {"ts": ts.isoformat(timespec="milliseconds"),
                               "level": record.levelname, "logger": record.name,
                               "process": record.processName, "pid": record.process,
                               "message": record.getMessage()}
        for name in TASK_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "INFO", fmt: str = "plain") -> None:
    """The only place that configures logging: one stderr handler, plain or JSON."""
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(processName)s[%(process)d] "
                                "%(name)s: %(message)s"},
            "json": {"()": JsonFormatter},
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": fmt,
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # The start line is always shown, whatever the level.
        "loggers": {"streamq.cli": {"level": "INFO"}},
    })


def stdout_console() -> Console:
    """A console on stdout. On a terminal it wraps to the terminal's width; off one
    (a file, ``grep``) nothing is wrapped, so tracebacks, reasons and names that a
    reader or a program looks for stay on one line each. ``COLUMNS`` in the
    environment sets the width either way (``COLUMNS=80 streamq dead list | less``)."""
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console.width = UNWRAPPED_WIDTH
    return console


def load_app(specs: tuple[str, ...] | list[str]) -> StreamQ:
    """Import ``MODULE[:ATTRIBUTE]`` specs (cwd on the path) and return their app."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    candidates: list[Any] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # whatever it raised, as one line (ModuleImportError)
            raise import_failed(module_name, exc) from None
        if attr:
            try:
                candidates.append(getattr(module, attr))
            except AttributeError:
                raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") \
                    from None
            if not isinstance(candidates[-1], StreamQ):
                raise ConfigurationError(f"{spec} is not a StreamQ app")
        else:
            candidates += [v for v in vars(module).values() if isinstance(v, StreamQ)]
    return find_app(candidates)


def app_from_options(url: str | None, namespace: str | None, app_spec: str | None, *,
                     start_server: bool = True) -> StreamQ:
    """The app of ``--app`` (else a plain one from the environment), with ``--url``
    and ``--namespace`` applied in one ``configure`` when they change anything.

    With no URL anywhere, the app uses the embedded server of the project (found from
    the working directory up). A read-only command passes ``start_server=False``: it
    reads a server that runs, and raises ``EmbeddedServerError`` (one line, exit 1)
    rather than start one as a side effect."""
    app = StreamQ(url, namespace=namespace) if not app_spec else load_app([app_spec])
    changes = {k: v for k, v in (("url", url), ("namespace", namespace))
               if app_spec and v is not None and getattr(app.settings, k) != v}
    if not start_server and (changes.get("url") or app.settings.url) is None:
        from ..server.embedded import embedded_url

        changes["url"] = embedded_url(start=False)
    if changes:
        app.configure(**changes)
    return app


def url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--url``, ``--app`` and ``--namespace``, for every command that talks to a server."""
    fn = click.option("--namespace", default=None, metavar="NS",
                      help="Key namespace (default: the app's, else $STREAMQ_NAMESPACE, "
                           "else streamq).")(fn)
    fn = click.option("--app", "app_spec", default=None, metavar="MODULE[:ATTR]",
                      help="Import this module for its app and tasks.")(fn)
    return click.option("--url", default=None, metavar="URL",
                        help="redis://, rediss://, unix:// or redis+sentinel:// URL "
                             "(default: $STREAMQ_URL, "
                             "else the embedded server of the project: the nearest directory "
                             "up from here with .streamq/, pyproject.toml or .git).")(fn)


def leave_embedded(embedded: Resolved, console: Console, who: str) -> None:
    """Stop the embedded server if ``who`` (the demo, the bench) started it; else say
    that it keeps running: servers a command started must not pile up."""
    from ..server.embedded import stop_embedded

    if embedded.started:
        stop_embedded(embedded.project)
        console.print(f"stopped the embedded server that {who} started for "
                      f"{embedded.project} (its data stays in .streamq/)", markup=False,
                      soft_wrap=True)
    else:
        console.print(f"the embedded server of {embedded.project} was already running and "
                      "keeps running (stop it with: streamq server --stop)", markup=False,
                      soft_wrap=True)
