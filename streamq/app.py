"""``StreamQ``: the app object holding Settings, the broker and the task registry.

The module-level ``task`` decorator binds to one default app, built on first use
from the environment (``STREAMQ_URL``, else the embedded server). Importing
streamq builds nothing and connects to nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from typing import Any, overload

from . import keys, results, serialization
from .broker import Broker, Packed
from .deadletter import DeadLetters
from .errors import ConfigurationError
from .message import Message, now_ms
from .results import AsyncResult
from .settings import Settings, check_queue_name
from .task import P, R, Task, TaskOptions, build_message, due_ms_from

log = logging.getLogger(__name__)

_BATCH = 100  # calls per batch, and per script call: bounds how long one blocks the server


class StreamQ:
    """A streamq application: ``@app.task`` registers tasks, ``app.AsyncResult(id)``
    reads results. ``url`` is a redis://, rediss:// or unix:// URL; None means
    ``STREAMQ_URL``, then the embedded Valkey server of the current directory."""

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "streamq",
        default_queue: str = "default",
        serializer: str = "json",
        result_ttl: int = 86400,
        **options: Any,
    ) -> None:
        self.settings = Settings.from_env(
            url=url, namespace=namespace, default_queue=default_queue,
            serializer=serializer, result_ttl=result_ttl, **options,
        )
        serialization.content_type_of(self.settings.serializer)
        self.registry: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None

    def __repr__(self) -> str:
        return f"<StreamQ namespace={self.settings.namespace!r} url={self.broker_url_masked}>"

    # -- configuration ------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = Broker(self.settings)
        return self._broker

    @property
    def broker_url_masked(self) -> str:
        from .settings import mask_url

        return mask_url(self.settings.url) if self._broker is None else self._broker.masked_url

    def configure(self, **changes: Any) -> None:
        """Change settings (e.g. the worker's ``--url``); drops open connections."""
        self.settings = self.settings.with_changes(**{k: v for k, v in changes.items()
                                                      if v is not None})
        self.close()

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    @property
    def accept_content_types(self) -> set[str]:
        return serialization.accept_content_types(self.settings.accepted)

    # -- tasks ------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
        ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a task; works bare (``@app.task``) and with options
        (``name``, ``queue``, ``max_retries``, ``retry_backoff``, ``retry_backoff_max``,
        ``autoretry_for``, ``timeout``, ``max_deliveries``)."""
        unknown = set(options) - set(TaskOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")

        def register(func: Callable[P, R]) -> Task[P, R]:
            opts = dict(options)
            opts.setdefault("name", f"{func.__module__}.{func.__qualname__}")
            opts.setdefault("queue", self.settings.default_queue)
            autoretry = opts.get("autoretry_for", (Exception,))
            opts["autoretry_for"] = tuple(autoretry) if isinstance(autoretry, Sequence) \
                else (autoretry,)
            task = Task(self, func, TaskOptions(**opts))
            existing = self.registry.get(task.name)
            if existing is not None and existing.fn is not func and \
                    existing.fn.__code__ is not func.__code__:
                log.warning("Task name %s registered twice; the later definition wins.",
                            task.name)
            self.registry[task.name] = task
            return task

        return register(fn) if fn is not None else register

    @property
    def dead(self) -> DeadLetters:
        """Dead-letter operations: ``app.dead.list()``, ``.requeue()``, ``.purge()``."""
        return DeadLetters(self)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's spelling
        return AsyncResult(task_id, self)

    # -- enqueue ----------------------------------------------------------------------
    def send(self, prepared: Sequence[tuple[Message, int | None]]) -> list[AsyncResult]:
        """Write records and messages for prepared calls, each record before its
        message, in batches of ``_BATCH`` calls streamed on one connection (see
        ``Broker.send``): ``delay()`` is one round trip, and ``map()`` packs the next
        batch while the server runs the one before."""
        ns, ttl = self.settings.namespace, self.settings.result_ttl
        broker = self.broker

        if len(prepared) == 1:  # delay(): one batch, nothing to group or stream
            message, due = prepared[0]
            commands: list[bytes] = []
            self._enqueue(commands, message, due, message.enqueued_ms, ns, ttl)
            with broker.errors():
                broker.run(Packed(commands))
            return [AsyncResult(message.id, self, sent_at=time.monotonic())]

        def batches() -> Iterator[list[bytes]]:
            for start in range(0, len(prepared), _BATCH):
                enq = now_ms()
                commands: list[bytes] = []
                # Consecutive calls of one task to one queue, due now (map()'s case),
                # share one record template and one script call.
                runs = groupby(prepared[start:start + _BATCH],
                               key=lambda p: (p[0].task, p[0].queue, p[1] is None))
                for (task, queue, due_now), items in runs:
                    run = list(items)
                    if due_now and len(run) > 1:
                        commands.append(broker.enqueue_many_command(
                            queue, [keys.result(ns, m.id) for m, _ in run],
                            _new_record(task, queue, enq, None), ttl,
                            [m.encode() for m, _ in run]))
                        self._note_queue(commands, queue)
                    else:
                        for message, due in run:
                            self._enqueue(commands, message, due, enq, ns, ttl)
                yield commands

        with broker.errors():
            broker.send(batches())
        sent_at = time.monotonic()
        return [AsyncResult(m.id, self, sent_at=sent_at) for m, _ in prepared]

    def _enqueue(self, out: list[bytes], message: Message, due: int | None, enq: int,
                 ns: str, ttl: int) -> None:
        # Keep a scheduled record alive at least until it is due.
        wait_s = max(0, (due - enq) // 1000) if due else 0
        self.broker.enqueue_commands(out, keys.result(ns, message.id),
                                     _new_record(message.task, message.queue, enq, due),
                                     ttl + wait_s, message.queue, message.id,
                                     message.encode(), due)
        self._note_queue(out, message.queue)

    def _note_queue(self, out: list[bytes], queue: str) -> None:
        if self.broker.note_queue(queue):
            out.append(self.broker.pack("SADD", keys.queues(self.settings.namespace), queue))

    def send_by_name(self, name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None
                     = None, *, queue: str | None = None, countdown: float | None = None
                     ) -> AsyncResult:
        """Enqueue a task by name without importing it (from the shell, cron, ...)."""
        task = self.registry.get(name)
        if task is not None:
            msg, due = task.prepare(tuple(args), dict(kwargs or {}), countdown=countdown,
                                    queue=queue)
            return self.send([(msg, due)])[0]
        due = due_ms_from(countdown, None)
        msg = build_message(self.settings.serializer, name,
                            check_queue_name(queue) if queue else self.settings.default_queue,
                            args, dict(kwargs or {}), due)
        return self.send([(msg, due)])[0]


def _new_record(task: str, queue: str, enqueued_ms: int, due_ms: int | None) -> list[Any]:
    """The field/value pairs of a task's record as enqueued."""
    record: list[Any] = ["status", results.SCHEDULED if due_ms else results.PENDING,
                         "task", task, "queue", queue, "retries", 0,
                         "enqueued_ms", enqueued_ms]
    if due_ms:
        record += ["eta_ms", due_ms]
    return record


_default_app: StreamQ | None = None


def default_app() -> StreamQ:
    """The app behind ``streamq.task``: built on first use from ``STREAMQ_*`` variables."""
    global _default_app
    if _default_app is None:
        _default_app = StreamQ()
    return _default_app


def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """``@task`` bound to the default app (see ``default_app``)."""
    return default_app().task(fn, **options) if fn is not None else \
        default_app().task(**options)


def find_app(candidates: Sequence[Any]) -> StreamQ:
    apps = {id(a): a for a in candidates if isinstance(a, StreamQ)}
    if len(apps) > 1:
        raise ConfigurationError("several StreamQ apps found; name one as MODULE:ATTRIBUTE")
    if apps:
        return next(iter(apps.values()))
    return default_app()
