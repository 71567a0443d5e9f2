"""``streamq worker``: run worker processes for the tasks of some modules."""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from ..base.errors import ConfigurationError
from ..base.settings import mask_url
from .common import configure_logging, load_app
from .importing import ModuleImportError

log = logging.getLogger("streamq.cli")


@click.command()
@click.argument("modules", nargs=-1, required=True)
@click.option("--url", default=None, metavar="URL",
              help="Server URL (default: the app's, $STREAMQ_URL, else embedded).")
@click.option("--namespace", default=None, metavar="NS",
              help="Key namespace (default: the app's).")
@click.option("-Q", "--queues", default=None, metavar="Q1,Q2",
              help="Queues to consume (default: every queue the tasks use).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 512), default=None,
              help="Worker processes (default: CPU count).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, metavar="N",
              help="Tasks each process runs at once, in threads ($STREAMQ_THREADS; "
                   "default 1).")
@click.option("--async-concurrency", type=click.IntRange(1, 100_000), default=None,
              metavar="K", help="async def tasks each process runs at once on its event "
                                "loop ($STREAMQ_ASYNC_CONCURRENCY; default 100).")
@click.option("--prefetch", type=click.IntRange(1, 10000), default=None,
              help="Most messages one process reads at once (default 100).")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="Seconds running tasks may finish after SIGTERM (default 30).")
@click.option("--claim-after", type=click.FloatRange(0.05), default=None,
              help="Seconds before a dead host's pending messages are reclaimed (default 60).")
@click.option("--heartbeat", type=click.FloatRange(0.05), default=None,
              help="Seconds between heartbeats (default 5).")
@click.option("--max-tasks-per-child", type=click.IntRange(0), default=None, metavar="N",
              help="Replace a process after it handled N messages (default: never).")
@click.option("--max-memory-per-child", type=click.IntRange(0), default=None, metavar="MB",
              help="Replace a process once its RSS exceeds MB megabytes, after its task "
                   "(default: never).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port.")
@click.option("--reload", is_flag=True,
              help="Restart when a .py file under the modules' directories changes; a "
                   "module that does not import is reported in one line and loaded again "
                   "at the next save.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="plain", show_default=True,
              type=click.Choice(["plain", "json"]))
def worker(modules: tuple[str, ...], url: str | None, namespace: str | None, queues: str | None,
           concurrency: int | None, threads: int | None, async_concurrency: int | None,
           prefetch: int | None, grace: float | None,
           claim_after: float | None, heartbeat: float | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None,
           metrics_port: int | None, reload: bool, log_level: str, log_format: str) -> None:
    """Run worker processes for the tasks in MODULES (MODULE or MODULE:APP).

    \b
    Example:
      streamq worker worker.tasks -Q default,emails -c 4 --grace 60
    """
    from ..worker import metrics, reloading
    from ..worker.supervisor import Supervisor

    configure_logging(log_level, log_format)
    began = time.time()
    try:
        app = load_app(modules)
    except ModuleImportError as exc:
        if not reload:
            raise
        # --reload: a module being edited may not import yet; the next save may fix it.
        reloading.wait_for_a_fix(str(exc), reloading.module_dirs(modules), exc.path, began)
    reload_dirs = reloading.module_dirs(modules) if reload else None
    if not app.registry:
        raise ConfigurationError(f"no tasks are registered by {', '.join(modules)}")
    if app.settings.eager:
        raise ConfigurationError(
            "the app is in eager mode (eager=True or STREAMQ_EAGER=1, meant for unit tests): "
            "a task that enqueues another would run it in place; unset it for workers")
    # Resolved before any fork (this may start the embedded server), then every change
    # in one configure: the processes inherit settings that no longer move.
    resolved = url or app.server.url
    app.configure(url=resolved, namespace=namespace, claim_after_s=claim_after,
                  heartbeat_s=heartbeat, grace_s=grace,
                  max_tasks_per_child=max_tasks_per_child,
                  max_memory_per_child=max_memory_per_child, threads=threads,
                  async_concurrency=async_concurrency)
    qs = [q.strip() for q in queues.split(",") if q.strip()] if queues else \
        sorted({t.options.queue for t in app.registry.values()} | {app.settings.default_queue})
    n = concurrency or os.cpu_count() or 1
    policy = app.server.info("memory").get("maxmemory_policy")  # also the connection check
    for q in qs:  # a partitioned queue: read all its partitions (StreamQ.queue)
        app.server.broker.check_partitions(q)
    read = [p for q in qs for p in app.partitions.get(q, (q,))]
    if policy and policy != "noeviction":
        log.warning("The server's maxmemory-policy is %s: under memory pressure it may evict "
                    "queue keys and lose tasks. Set maxmemory-policy noeviction.", policy)
    log.info("streamq worker starting: url=%s queues=%s concurrency=%d threads=%d "
             "tasks=[%s]", mask_url(resolved), ",".join(qs), n, app.settings.threads,
             ", ".join(sorted(app.registry)))
    # Before any fork: worker processes write their metric files there.
    metrics_dir = metrics.prepare_multiprocess_dir() if metrics_port is not None else None
    sup = Supervisor(app, read, n, prefetch=prefetch, grace_s=grace, reload_dirs=reload_dirs)
    served = None
    if metrics_port is not None:
        served = metrics.serve(app, metrics_port, lambda: sup.restarts)
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

