"""Prometheus metrics for workers (prometheus-client in multiprocess mode).

Task processes are forked from the supervisor, so each one writes its counters
to files in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor's HTTP endpoint sums
them at scrape time. Queue figures are read from the server at scrape time.

=============================================  =========  ===========  =========================
metric                                         type       labels       meaning
=============================================  =========  ===========  =========================
``streamq_tasks_started_total``                counter    task, queue  executions started
``streamq_tasks_succeeded_total``              counter    task, queue  executions that returned
``streamq_tasks_failed_total``                 counter    task, queue  failed for good (then
                                                                       dead-lettered)
``streamq_tasks_retried_total``                counter    task, queue  failed, retry scheduled
``streamq_tasks_dead_total``                   counter    task, queue  dead-lettered without a
                                                                       failure (rejected,
                                                                       undecodable, unknown
                                                                       task, max_deliveries)
``streamq_task_duration_seconds``              histogram  task, queue  run time of succeeded
                                                                       tasks
``streamq_queue_backlog``                      gauge      queue,       not yet delivered
                                                          partition
``streamq_queue_pending``                      gauge      queue,       delivered, not acked
                                                          partition
``streamq_queue_scheduled``                    gauge      queue,       delayed (countdown, eta,
                                                          partition    retry backoff)
``streamq_queue_dead``                         gauge      queue,       dead letters kept
                                                          partition
``streamq_queue_oldest_pending_age_seconds``   gauge      queue,       idle time of the oldest
                                                          partition    pending message (absent
                                                                       when none)
``streamq_worker_process_restarts_total``      counter    (none)       task processes replaced
                                                                       by this supervisor after a
                                                                       crash or a time limit (not
                                                                       a recycle)
=============================================  =========  ===========  =========================

Task counters are per worker (each supervisor serves its own processes' files);
queue gauges are the same on every worker: aggregate them with ``max``, not ``sum``.
A queue gauge's ``partition`` is "" for a plain queue and for a partitioned queue's
total, and the partition's queue name on each partition's own row, so
``streamq_queue_backlog{partition=""}`` is one figure per logical queue (KEDA's
Prometheus trigger scales on it). Task counters label the queue a task ran from: a
partition's name on a partitioned queue.

Importing this module has no side effects; prometheus_client is imported inside
the functions, after ``prepare_multiprocess_dir`` has set the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Container, Iterator
from typing import TYPE_CHECKING, Any

from ..api.hooks import Hook, TaskEvent
from ..server.status import collect_status

if TYPE_CHECKING:
    from ..api.app import StreamQ

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0, float("inf"))
_OUTCOMES = ("started", "succeeded", "failed", "retried", "dead")

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
"""This process's metric objects, created on first use after the directory is set."""


def prepare_multiprocess_dir() -> str:
    """Create a fresh directory for the metric files, point ``PROMETHEUS_MULTIPROC_DIR``
    at it and return it. Call it in the supervisor before forking any process."""
    global _metrics
    path = tempfile.mkdtemp(prefix="streamq-metrics-")
    os.environ[ENV] = path
    with _lock:
        _metrics = None
    _refresh_value_class()
    return path


def cleanup_multiprocess_dir(path: str | None = None) -> None:
    """Close this process's metric files, unset the variable (if it names ``path``)
    and delete the directory. For the supervisor's exit and for tests."""
    global _metrics
    path = path or os.environ.get(ENV)
    with _lock:
        _metrics = None
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
    if path and os.environ.get(ENV) == path:
        del os.environ[ENV]
    _refresh_value_class()
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _refresh_value_class() -> None:
    # prometheus_client picks single- or multiprocess values when it is first
    # imported, and a multiprocess value class caches its files' directory: if it
    # was imported before the variable changed, pick again so new metrics follow.
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def _get_metrics() -> dict[str, Any]:
    global _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import Counter, Histogram

            labels = ("task", "queue")
            # registry=None: the multiprocess collector reads the files; registering
            # in the global registry would only risk duplicate-name errors.
            made: dict[str, Any] = {
                outcome: Counter(f"streamq_tasks_{outcome}_total",
                                 f"Tasks {outcome} (see streamq.metrics).", labels,
                                 registry=None)
                for outcome in _OUTCOMES
            }
            made["duration"] = Histogram("streamq_task_duration_seconds",
                                         "Run time of succeeded tasks in seconds.", labels,
                                         buckets=DURATION_BUCKETS, registry=None)
            _metrics = made
        return _metrics


UNKNOWN_TASK = "(unknown)"
"""The ``task`` label of messages naming a task this worker does not know: label
values come from message contents, and made-up names must not make new series."""


class MetricsHook(Hook):
    """Counts outcomes and run times (a hook: ``app.add_hook(MetricsHook(app.registry))``).
    ``known`` task names are labelled as themselves, any other as ``UNKNOWN_TASK``."""

    def __init__(self, known: Container[str] | None = None) -> None:
        if not os.environ.get(ENV):
            raise RuntimeError(f"{ENV} is not set: call prepare_multiprocess_dir() first")
        self.metrics = _get_metrics()
        self.known = known

    def _task(self, event: TaskEvent) -> str:
        if self.known is None or event.task in self.known:
            return event.task
        return UNKNOWN_TASK

    def _inc(self, outcome: str, event: TaskEvent) -> None:
        self.metrics[outcome].labels(self._task(event), event.queue).inc()

    def started(self, event: TaskEvent) -> None:
        self._inc("started", event)

    def succeeded(self, event: TaskEvent) -> None:
        self._inc("succeeded", event)
        if event.runtime_s is not None:
            self.metrics["duration"].labels(self._task(event), event.queue).observe(
                event.runtime_s)

    def retried(self, event: TaskEvent) -> None:
        self._inc("retried", event)

    def failed(self, event: TaskEvent) -> None:
        self._inc("failed", event)

    def dead(self, event: TaskEvent) -> None:
        self._inc("dead", event)


def mark_process_dead(pid: int) -> None:
    """Tell prometheus_client that process ``pid`` exited (call when a child is reaped)."""
    if not os.environ.get(ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _QueueCollector:
    """Reads queue figures from the server at scrape time."""

    def __init__(self, app: StreamQ, restarts: Callable[[], int] | None) -> None:
        self.app = app
        self.restarts = restarts

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.restarts is not None:
            restarts = CounterMetricFamily(
                "streamq_worker_process_restarts",
                "Task processes replaced by this worker's supervisor after a crash or a "
                "time limit (recycling is not counted).")
            restarts.add_metric([], float(self.restarts()))
            yield restarts
        try:
            queues = collect_status(self.app.server.connection, self.app.settings)["queues"]
        except Exception as exc:  # a scrape must answer even when the server does not
            log.warning("Metrics scrape could not read queue figures: %s", exc)
            return
        for field, help_text in (("backlog", "Messages waiting, not yet delivered."),
                                 ("pending", "Messages delivered, not yet acknowledged."),
                                 ("scheduled", "Delayed messages (countdown, eta, retries)."),
                                 ("dead", "Dead letters kept.")):
            gauge = GaugeMetricFamily(f"streamq_queue_{field}", help_text,
                                      labels=["queue", "partition"])
            for q in queues:
                gauge.add_metric(_labels(q), float(q[field]))
            yield gauge
        age = GaugeMetricFamily("streamq_queue_oldest_pending_age_seconds",
                                "Idle time of the oldest pending message.",
                                labels=["queue", "partition"])
        for q in queues:
            if q["oldest_pending_age_s"] is not None:
                age.add_metric(_labels(q), float(q["oldest_pending_age_s"]))
        yield age


def _labels(queue_doc: dict[str, Any]) -> list[str]:
    """(queue, partition): a partition's row names its queue and itself; a plain
    queue's row and a partitioned queue's total have partition "" (so
    ``{partition=""}`` selects one figure per logical queue)."""
    base = queue_doc.get("partition_of")
    return [base, queue_doc["queue"]] if base else [queue_doc["queue"], ""]


def serve(app: StreamQ, port: int, restarts: Callable[[], int] | None = None, *,
          addr: str = "127.0.0.1") -> tuple[Any, threading.Thread, int]:
    """Serve ``/metrics`` on ``addr:port`` (0 picks a free port) from a daemon thread.

    Returns ``(server, thread, port)``; stop with ``server.shutdown()``,
    ``server.server_close()`` and ``thread.join()``.
    """
    if not os.environ.get(ENV):
        raise RuntimeError(f"{ENV} is not set: call prepare_multiprocess_dir() first")
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_QueueCollector(app, restarts))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread, int(server.server_port)
