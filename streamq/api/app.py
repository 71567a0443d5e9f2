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

from ..base.errors import ConfigurationError
from ..base.ids import queue_of
from ..base.settings import Settings, check_queue_name, mask_url
from ..data import record, serialization
from ..data.message import Message, now_ms
from ..server.deadletters import DeadLetters
from ..server.link import ServerLink
from .hooks import Hook, Hooks, TaskEvent
from .result import AsyncResult
from .result import AsyncResult as _AsyncResult  # for annotations: StreamQ.AsyncResult shadows it
from .task import P, R, Task, TaskOptions, build_message, due_ms_from

log = logging.getLogger(__name__)

_BATCH = 100  # calls per batch, and per script call: bounds how long one blocks the server


class StreamQ:
    """A streamq application: ``@app.task`` registers tasks, ``app.AsyncResult(id)``
    reads results. ``url`` is a redis://, rediss:// or unix:// URL; None means
    ``STREAMQ_URL``, then the embedded Valkey server of the current directory."""

    def __init__(self, url: str | None = None, **options: Any) -> None:
        """``options`` are ``Settings`` fields (``namespace``, ``default_queue``,
        ``serializer``, ``result_ttl``, ...); an unknown name is a ``ConfigurationError``.
        ``STREAMQ_*`` environment variables fill in what is not given."""
        self.settings = Settings.from_env(url=url, **options)
        serialization.content_type_of(self.settings.serializer)
        self.registry: dict[str, Task[Any, Any]] = {}
        self.hooks = Hooks()
        self._server: ServerLink | None = None

    def __repr__(self) -> str:
        return f"<StreamQ namespace={self.settings.namespace!r} url={self.masked_url}>"

    # -- configuration ------------------------------------------------------------
    @property
    def server(self) -> ServerLink:
        """The link to the server (nothing connects until it is used)."""
        if self._server is None:
            self._server = ServerLink(self.settings)
        return self._server

    @property
    def masked_url(self) -> str:
        return mask_url(self.settings.url) if self._server is None else \
            self._server.masked_url

    def configure(self, **changes: Any) -> None:
        """Replace settings (e.g. the worker's ``--url``). Closes this app's
        connections, which the next use opens again with the new settings; unknown
        names are a ``ConfigurationError``."""
        self.settings = self.settings.with_changes(**changes)
        self.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def add_hook(self, hook: Hook) -> None:
        """Run ``hook`` at each step of this app's tasks (see ``streamq.Hook``)."""
        self.hooks.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        self.hooks.remove(hook)

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
        return self.server.dead

    def AsyncResult(self, task_id: str) -> _AsyncResult:  # noqa: N802 - Celery's spelling
        return AsyncResult(task_id, self)

    # -- enqueue ----------------------------------------------------------------------
    def enqueue(self, prepared: Sequence[tuple[Message, int | None]]) -> list[_AsyncResult]:
        """Write records and messages for prepared calls, each record before its
        message, in batches of ``_BATCH`` calls streamed on one connection:
        ``delay()`` is one round trip, and ``map()`` packs the next batch while the
        server runs the one before."""
        broker, ttl = self.server.broker, self.settings.result_ttl

        if len(prepared) == 1:  # delay(): one batch, nothing to group or stream
            message, due = prepared[0]
            commands: list[bytes] = []
            self._enqueue_one(commands, message, due, message.enqueued_ms, ttl)
            broker.send_one(commands)
            self._emit_enqueued(prepared)
            return [AsyncResult(message.id, self, queue=message.queue,
                                sent_at=time.monotonic())]

        def batches() -> Iterator[list[bytes]]:
            for start in range(0, len(prepared), _BATCH):
                enq = now_ms()
                commands: list[bytes] = []
                # Consecutive calls of one task to one queue, due now, with generated
                # ids (map()'s case) share one record template and one script call.
                runs = groupby(prepared[start:start + _BATCH],
                               key=lambda p: (p[0].task, p[0].queue, p[1] is None and
                                              queue_of(p[0].id) == p[0].queue))
                for (task, queue, shared), items in runs:
                    run = list(items)
                    if shared and len(run) > 1:
                        broker.enqueue_many_command(
                            commands, queue, [m.id for m, _ in run],
                            record.enqueued(task, queue, enq, None),
                            [m.encode() for m, _ in run])
                    else:
                        for message, due in run:
                            self._enqueue_one(commands, message, due, enq, ttl)
                yield commands

        broker.send_many(batches())
        self._emit_enqueued(prepared)
        sent_at = time.monotonic()
        return [AsyncResult(m.id, self, queue=m.queue, sent_at=sent_at) for m, _ in prepared]

    def _enqueue_one(self, out: list[bytes], message: Message, due: int | None, enq: int,
                     ttl: int) -> None:
        # Keep a scheduled record alive at least until it is due.
        wait_s = max(0, (due - enq) // 1000) if due else 0
        self.server.broker.enqueue_commands(
            out, message.id, message.queue,
            record.enqueued(message.task, message.queue, enq, due), ttl + wait_s,
            message.encode(), due, queue_of(message.id) == message.queue)

    def _emit_enqueued(self, prepared: Sequence[tuple[Message, int | None]]) -> None:
        if self.hooks.wants("enqueued"):
            for m, _ in prepared:
                self.hooks.emit("enqueued", TaskEvent(m.id, m.task, m.queue, m.retries + 1))

    def send_by_name(self, name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None
                     = None, *, queue: str | None = None, countdown: float | None = None
                     ) -> _AsyncResult:
        """Enqueue a task by name without importing it (from the shell, cron, ...)."""
        task = self.registry.get(name)
        if task is not None:
            msg, due = task.prepare(tuple(args), dict(kwargs or {}), countdown=countdown,
                                    queue=queue)
            return self.enqueue([(msg, due)])[0]
        due = due_ms_from(countdown, None)
        msg = build_message(self.settings.serializer, name,
                            check_queue_name(queue) if queue else self.settings.default_queue,
                            args, dict(kwargs or {}), due)
        return self.enqueue([(msg, due)])[0]


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
