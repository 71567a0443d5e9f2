"""The ``streamq`` command: the only place that configures logging.

Every error reaches the user as one line (``streamq: error: ...``); bad input
exits 2, other failures exit 1. Tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import logging
import logging.config
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .app import StreamQ, find_app
from .errors import ConfigurationError, StreamQError
from .settings import mask_url

log = logging.getLogger("streamq.cli")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        doc = {"ts": self.formatTime(record), "level": record.levelname,
               "logger": record.name, "process": record.processName, "pid": record.process,
               "message": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str = "INFO", fmt: str = "plain") -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(processName)s[%(process)d] "
                                "%(name)s: %(message)s"},
            "json": {"()": _JsonFormatter},
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": fmt,
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # The start line is always shown, whatever the level.
        "loggers": {"streamq.cli": {"level": "INFO"}},
    })


def load_app(specs: tuple[str, ...] | list[str], url: str | None = None) -> StreamQ:
    """Import ``MODULE[:ATTRIBUTE]`` specs (cwd on the path) and return their app."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    candidates: list[Any] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import module {module_name!r}: {exc}") from None
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
    app = find_app(candidates)
    if url:
        app.configure(url=url)
    return app


def app_from_options(url: str | None, namespace: str | None, app_spec: str | None) -> StreamQ:
    if app_spec:
        app = load_app([app_spec], url)
    else:
        app = StreamQ(url, **({"namespace": namespace} if namespace else {}))
    if namespace and app.settings.namespace != namespace:
        app.configure(namespace=namespace)
    return app


def url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--namespace", default=None, metavar="NS",
                      help="Key namespace (default: streamq, or the app's).")(fn)
    fn = click.option("--app", "app_spec", default=None, metavar="MODULE[:ATTR]",
                      help="Import this module for its app and tasks.")(fn)
    return click.option("--url", default=None, envvar="STREAMQ_URL", metavar="URL",
                        help="redis://, rediss:// or unix:// URL (default: $STREAMQ_URL, "
                             "else the embedded server).")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="streamq")
def cli() -> None:
    """streamq: a task queue on Redis Streams.

    \b
    Example:
      streamq worker worker.tasks -c 2      # run tasks from worker/tasks.py
      streamq status                         # queues, workers, what is stuck
    """


@cli.command()
@click.argument("modules", nargs=-1, required=True)
@click.option("--url", default=None, envvar="STREAMQ_URL", metavar="URL",
              help="Server URL (default: the app's, $STREAMQ_URL, else embedded).")
@click.option("--namespace", default=None, envvar="STREAMQ_NAMESPACE", metavar="NS",
              help="Key namespace (default: the app's).")
@click.option("-Q", "--queues", default=None, metavar="Q1,Q2",
              help="Queues to consume (default: every queue the tasks use).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 512), default=None,
              help="Worker processes (default: CPU count).")
@click.option("--prefetch", type=click.IntRange(1, 10000), default=None,
              help="Most messages one process reads at once (default 100).")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="Seconds running tasks may finish after SIGTERM (default 30).")
@click.option("--claim-after", type=click.FloatRange(0.05), default=None,
              help="Seconds before a dead host's pending messages are reclaimed (default 60).")
@click.option("--heartbeat", type=click.FloatRange(0.05), default=None,
              help="Seconds between heartbeats (default 5).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port.")
@click.option("--reload", is_flag=True, help="Restart processes when a Python file changes.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="plain", show_default=True,
              type=click.Choice(["plain", "json"]))
def worker(modules: tuple[str, ...], url: str | None, namespace: str | None, queues: str | None,
           concurrency: int | None, prefetch: int | None, grace: float | None,
           claim_after: float | None, heartbeat: float | None, metrics_port: int | None,
           reload: bool, log_level: str, log_format: str) -> None:
    """Run worker processes for the tasks in MODULES (MODULE or MODULE:APP).

    \b
    Example:
      streamq worker worker.tasks -Q default,emails -c 4 --grace 60
    """
    from . import metrics
    from .supervisor import Supervisor

    configure_logging(log_level, log_format)
    app = load_app(modules, url)
    reload_dirs = _module_dirs(modules) if reload else None
    app.configure(namespace=namespace, claim_after_s=claim_after, heartbeat_s=heartbeat,
                  grace_s=grace)
    if not app.registry:
        raise ConfigurationError(f"no tasks are registered by {', '.join(modules)}")
    qs = [q.strip() for q in queues.split(",") if q.strip()] if queues else \
        sorted({t.options.queue for t in app.registry.values()} | {app.settings.default_queue})
    n = concurrency or os.cpu_count() or 1
    with app.broker.errors():
        resolved = app.broker.url
        app.broker.client.ping()
        policy = app.broker.client.info("memory").get("maxmemory_policy")
    if policy and policy != "noeviction":
        log.warning("The server's maxmemory-policy is %s: under memory pressure it may evict "
                    "queue keys and lose tasks. Set maxmemory-policy noeviction.", policy)
    app.configure(url=resolved)
    log.info("streamq worker starting: url=%s queues=%s concurrency=%d tasks=[%s]",
             mask_url(resolved), ",".join(qs), n, ", ".join(sorted(app.registry)))
    # Before any fork: worker processes write their metric files there.
    metrics_dir = metrics.prepare_multiprocess_dir() if metrics_port is not None else None
    sup = Supervisor(app, qs, n, prefetch=prefetch, grace_s=grace, reload_dirs=reload_dirs)
    served = None
    if metrics_port is not None:
        served = metrics.serve(app, metrics_port, sup)
        log.info("Serving Prometheus metrics at http://127.0.0.1:%d/metrics", served[2])
    try:
        code = sup.run()
    finally:
        if served is not None:
            http, thread, _ = served
            http.shutdown()
            http.server_close()
            thread.join(5)
            metrics.cleanup_multiprocess_dir(metrics_dir)
    sys.exit(code)


def _module_dirs(specs: tuple[str, ...]) -> list[str]:
    """The directories of the imported task modules, watched by ``--reload``."""
    dirs = []
    for spec in specs:
        module = sys.modules.get(spec.partition(":")[0])
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)))
    return sorted(set(dirs))


@cli.command()
@click.option("--stop", is_flag=True, help="Stop the embedded server of this directory.")
def server(stop: bool) -> None:
    """Run the embedded Valkey server of this directory in the foreground.

    \b
    Example:
      streamq server          # state in ./.streamq/, unix socket, AOF on
    """
    from . import embedded

    if stop:
        stopped = embedded.stop_embedded()
        click.echo("stopped the embedded server" if stopped else "no embedded server running")
        return
    sys.exit(embedded.run_server_foreground())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the click group, turning every error into one line."""
    from . import cli_bench, cli_ops, cli_status  # noqa: F401  (register their commands)

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
