"""The ``streamq`` command: one click group built from one module per command family.

Every error reaches the user as one line (``streamq: error: ...``); bad input
exits 2, other failures exit 1. Tracebacks are for bugs only. Logging is configured
here only (``common.configure_logging``, by the commands that log).
"""

from __future__ import annotations

import sys

import click

from ..base.errors import ConfigurationError, StreamQError
from .bench import bench
from .dead import dead
from .demo import demo
from .enqueue import enqueue
from .periodic import periodic
from .probe import probe
from .results import result
from .server import server
from .status import status
from .worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="streamq")
def cli() -> None:
    """streamq: a task queue on Redis Streams.

    \b
    Example:
      streamq worker worker.tasks -c 2      # run tasks from worker/tasks.py
      streamq status                         # queues, workers, what is stuck
    """


for _command in (worker, server, status, result, enqueue, dead, periodic, demo, bench, probe):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the click group, turning every error into one line."""
    try:
        cli.main(args=argv, prog_name="streamq", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"streamq: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"streamq: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except ConfigurationError as exc:
        click.echo(f"streamq: error: {exc}", err=True)
        sys.exit(2)
    except StreamQError as exc:
        click.echo(f"streamq: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
