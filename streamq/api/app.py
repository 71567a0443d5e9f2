"""``StreamQ``: the app object holding Settings, the broker and the task registry.

The module-level ``task`` decorator binds to one default app, built on first use
from the environment (``STREAMQ_URL``, else the embedded server). Importing
streamq builds nothing and connects to nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager
from itertools import groupby
from typing import TYPE_CHECKING, Any, overload

from ..base.errors import (
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    NotDurableError,
)
from ..base.ids import queue_of
from ..base.partitions import check as check_partitions
from ..base.partitions import names as partition_names
from ..base.settings import Settings, check_queue_name, mask_url
from ..data import record, serialization
from ..data.message import Message, now_ms
from ..server.deadletters import DeadLetters
from ..server.link import ServerLink
from . import aio, eager
from . import periodic as _periodic
from .hooks import Hook, Hooks, TaskEvent
from .limits import (
    BATCH,
    DEFAULT_VALUE_LIMIT,
    check_size,
    checked_signer,
    sure_body,
)
from .partial import partly_enqueued
from .result import AsyncResult
from .result import AsyncResult as _AsyncResult  # for annotations: StreamQ.AsyncResult shadows it
from .task import CountdownDue, P, R, Task, TaskOptions, build_message, due_ms_from

if TYPE_CHECKING:
    from ..server.aio import AsyncLinks

log = logging.getLogger(__name__)

_BATCH = BATCH

class StreamQ:
    """A streamq application: ``@app.task`` registers tasks, ``app.AsyncResult(id)``
    reads results. ``url``: redis://, rediss:// or unix://; None: ``STREAMQ_URL``, else
    the project's embedded Valkey server, started on first use (``server.embedded``)."""

    def __init__(self, url: str | None = None, **options: Any) -> None:
        """``options``: ``Settings`` fields (else ``ConfigurationError``); then ``STREAMQ_*``."""
        self.settings = Settings.from_env(url=url, **options)
        self.signer = checked_signer(self.settings)
        """Signs every message this app writes (``signing_key``); None: signing off."""
        self.registry: dict[str, Task[Any, Any]] = {}
        self.hooks = Hooks()
        self.partitions: dict[str, tuple[str, ...]] = {}
        """Partitioned queues (``queue``): name -> its partitions' queues."""
        self._server: ServerLink | None = None
        self._aio: AsyncLinks | None = None
        self._value_limit: int | None = None

    def __repr__(self) -> str:
        return f"<StreamQ namespace={self.settings.namespace!r} url={self.masked_url}>"

    # -- configuration ------------------------------------------------------------
    @property
    def server(self) -> ServerLink:
        """The link to the server (nothing connects until it is used)."""
        if self._server is None:
            self._server = ServerLink(self.settings)
            self._server.broker.partitions = self.partitions  # the same dict: later ones too
        return self._server

    @property
    def masked_url(self) -> str:
        return mask_url(self.settings.url) if self._server is None else self._server.masked_url

    def configure(self, **changes: Any) -> None:
        """New settings (the worker's ``--url``; unknown: ``ConfigurationError``); reconnects."""
        settings = self.settings.with_changes(**changes)
        self.signer = checked_signer(settings)
        self.settings = settings
        self.close()

    @property
    def aio(self) -> AsyncLinks:
        """The asyncio links (one per event loop) of the ``a*`` methods."""
        if self._aio is None:
            from ..server.aio import AsyncLinks  # here: redis.asyncio takes 0.1 s to import
            self._aio = AsyncLinks(self.settings, lambda: self.server.url)
        return self._aio

    async def aclose(self) -> None:
        """Close the running event loop's connections (``close`` forgets them all)."""
        if self._aio is not None:
            await self._aio.aclose()

    def close(self) -> None:
        self._value_limit = None
        self._aio = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def value_limit(self) -> int:
        """The largest value in bytes the server accepts as one argument (a message, a
        result): its ``proto-max-bulk-len``, kept until ``close()``; 512 MiB when CONFIG
        is refused. Raises ``BrokerConnectionError`` when the server cannot be reached."""
        limit = self._value_limit
        if limit is None:
            try:
                reply = self.server.connection.client.config_get("proto-max-bulk-len")
                value = next(iter(reply.values()), None) if reply else None
                limit = int(value) if value is not None else DEFAULT_VALUE_LIMIT
            except BrokerConnectionError:
                raise
            except (BrokerError, ValueError):  # CONFIG disabled or renamed (managed servers)
                limit = DEFAULT_VALUE_LIMIT
            self._value_limit = limit
        return limit

    def add_hook(self, hook: Hook) -> None:
        """Run ``hook`` at each step of this app's tasks (see ``streamq.Hook``)."""
        self.hooks.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        self.hooks.remove(hook)

    @property
    def accept_content_types(self) -> set[str]:
        return serialization.accept_content_types(self.settings.accepted)

    def queue(self, name: str, *, partitions: int) -> tuple[str, ...]:
        """Declare ``name`` a partitioned queue of ``partitions`` streams (spread over a
        cluster's slots); see ``streamq.base.partitions``. Returns their queue names.
        Calls with a ``partition_key`` run one at a time per key, in enqueue order."""
        count = check_partitions(check_queue_name(name), partitions)
        known = self.partitions.get(name)
        if known is not None and len(known) != count:
            raise ConfigurationError(f"queue {name!r} is declared with {len(known)} "
                                     f"partitions already, not {count}")
        self.partitions[name] = partition_names(name, count)
        return self.partitions[name]

    # -- tasks ------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
        ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a task; works bare (``@app.task``) and with options
        (``name``, ``queue``, ``max_retries``, ``retry_backoff``, ``retry_backoff_max``,
        ``autoretry_for``, ``timeout``, ``soft_timeout``, ``max_deliveries``,
        ``ignore_result``)."""
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
        return eager.lookup(self, task_id) or AsyncResult(task_id, self)

    def eager(self, on: bool = True) -> AbstractContextManager[None]:
        """Eager mode on (or off) in a ``with`` block, then as before: ``streamq.api.eager``."""
        return eager.eager_mode(self, on)

    periodic = _periodic.periodic  # @app.periodic(cron=... or every=...): api/periodic.py
    add_periodic = _periodic.add_periodic

    # -- enqueue ----------------------------------------------------------------------
    def enqueue(self, prepared: Sequence[tuple[Message, int | None]], *, many: bool = False,
                durable: bool | None = None) -> list[_AsyncResult]:
        """Write records and messages for prepared calls, each record before its
        message, in batches of ``_BATCH`` calls streamed on one connection:
        ``delay()`` is one round trip, and ``map()`` packs the next batch while the
        server runs the one before.

        A message larger than the server accepts (``value_limit``) is refused with
        ``MessageTooLargeError`` before anything is sent. Several calls (or ``many``,
        as ``map()`` asks) that fail part way raise ``EnqueueError``, which says which
        calls were enqueued; one call raises the server's error itself.

        ``durable`` (None: the ``durable`` setting) returns only once the server has
        the writes in its AOF on disk (and on ``durable_replicas`` replicas): a wait
        rides behind the last write, and ``NotDurableError`` says when it was not
        confirmed (the calls were written and may run)."""
        s = self.settings
        if s.eager:  # run here and now, without a server (streamq.api.eager)
            return eager.enqueue(self, prepared)
        broker = self.server.broker
        wait = broker.durability.wait(s.durable_replicas, s.durable_timeout_s, s.socket_timeout_s
                                   ) if (s.durable if durable is None else durable) else None

        if len(prepared) == 1 and not many:  # delay(): one batch, nothing to stream
            message, due = prepared[0]
            commands = self._call_commands(message, due, message.encode())
            if wait is None:
                broker.send_one(commands)
            else:
                reply = broker.send_durable(commands, wait)
            self._emit_enqueued(prepared)
            handles = [AsyncResult(message.id, self, queue=message.queue,
                                   sent_at=time.monotonic(),
                                   ignored=message.ignore_result)]
            return handles if wait is None else self._confirmed(reply, handles)

        sure = self._sure_body
        for m, _ in prepared:
            if len(m.body) > sure:
                self._check_sizes(prepared)
                break

        answered: list[bool] = []
        try:
            reply = broker.send_many(self._batches(prepared), answered, wait)
        except BrokerError as exc:
            raise partly_enqueued(self, prepared, answered, exc, _BATCH,
                                  wait is not None) from exc
        self._emit_enqueued(prepared)
        sent_at = time.monotonic()
        handles = [AsyncResult(m.id, self, queue=m.queue, sent_at=sent_at,
                               ignored=m.ignore_result) for m, _ in prepared]
        return handles if wait is None else self._confirmed(reply, handles)

    # The packing below is shared by enqueue() and the asyncio path (``.aio``).
    def _call_commands(self, message: Message, due: int | None, encoded: str) -> list[bytes]:
        """The packed commands of one call (``encoded``: its envelope), size-checked."""
        if len(encoded) > self._sure_body:
            self._check_size(message, encoded)
        commands: list[bytes] = []
        self._enqueue_one(commands, message, due, message.enqueued_ms, self.settings.result_ttl,
                          encoded if self.signer is None else self.signer.sign(encoded))
        return commands

    def _batches(self, prepared: Sequence[tuple[Message, int | None]]
                 ) -> Iterator[list[bytes]]:
        """The packed commands of many calls, ``_BATCH`` calls per batch, packed lazily."""
        broker, ttl, seal = self.server.broker, self.settings.result_ttl, self._seal
        for start in range(0, len(prepared), _BATCH):
            enq = now_ms()
            commands: list[bytes] = []
            chunk = prepared[start:start + _BATCH]
            if self.partitions:  # calls spread over partitions: each one's in a run
                chunk = sorted(chunk, key=lambda p: p[0].queue)
            # Consecutive calls of one task to one queue, due now, with generated
            # ids (map()'s case) share one record template and one script call.
            runs = groupby(chunk, key=lambda p: (p[0].task, p[0].queue, p[1] is None and
                                                 queue_of(p[0].id) == p[0].queue and
                                                 not p[0].ignore_result and
                                                 p[0].key is None))
            for (task, queue, shared), items in runs:
                run = list(items)
                if shared and len(run) > 1:
                    broker.enqueue_many_command(
                        commands, queue, [m.id for m, _ in run],
                        record.enqueued(task, queue, enq, None), [seal(m) for m, _ in run])
                else:
                    for message, due in run:
                        self._enqueue_one(commands, message, due, enq, ttl)
            yield commands

    async def aenqueue(self, prepared: Sequence[tuple[Message, int | None]], *,
                       many: bool = False, durable: bool | None = None
                       ) -> list[_AsyncResult]:
        """``enqueue`` on the running event loop: see ``streamq.api.aio``."""
        return await aio.aenqueue(self, prepared, many=many, durable=durable)

    def asubmit(self, message: Message, due: int | None, durable: bool | None = None
                ) -> Coroutine[Any, Any, _AsyncResult]:
        """One call on the running event loop: see ``streamq.api.aio.submit``."""
        return aio.submit(self, message, due, durable)

    def _confirmed(self, reply: Any, handles: list[_AsyncResult]) -> list[_AsyncResult]:
        """``handles``, once the wait's ``reply`` confirms they are durable; else
        ``NotDurableError`` naming them (they were written, and may run)."""
        s = self.settings
        why = self.server.broker.durability.not_durable(reply, s.durable_replicas,
                                                        s.durable_timeout_s)
        if why is None:
            return handles
        first = handles[0]
        what = f"task {first.id}" if len(handles) == 1 else \
            f"each of {len(handles)} tasks ({first.id} ... {handles[-1].id})"
        raise NotDurableError(f"{what} was enqueued but {why}", handles=handles)

    def _enqueue_one(self, out: list[bytes], message: Message, due: int | None, enq: int,
                     ttl: int, encoded: bytes | str | None = None) -> None:
        # A countdown is due by the server's clock, not this process's.
        countdown_ms = due.countdown_ms if isinstance(due, CountdownDue) else None
        due = None if due is None else int(due)  # hiredis packs exact ints only
        # Keep a scheduled record alive at least until it is due.
        wait_s = max(0, (due - enq) // 1000) if due else 0
        self.server.broker.enqueue_commands(
            out, message.id, message.queue,
            None if message.ignore_result else
            record.enqueued(message.task, message.queue, enq, due), ttl + wait_s,
            self._seal(message) if encoded is None else encoded, due,
            queue_of(message.id) == message.queue, countdown_ms=countdown_ms,
            order_key=message.key)

    def _seal(self, message: Message) -> bytes | str:
        """A message as written: its envelope, signed when signing is on."""
        return message.encode() if self.signer is None else self.signer.sign(message.encode())

    @property
    def _sure_body(self) -> int:
        return sure_body(self.settings.max_message_bytes)

    def _check_size(self, message: Message, encoded: str, where: str = "") -> None:
        """Refuse a message over a size limit (``limits.check_size``)."""
        check_size(message, encoded, self.settings.max_message_bytes, self.value_limit, where)

    def _check_sizes(self, prepared: Sequence[tuple[Message, int | None]]) -> None:
        """``_check_size`` for each long message of several (before any is sent)."""
        sure = self._sure_body
        for i, (m, _) in enumerate(prepared):
            if len(m.body) > sure:
                self._check_size(m, m.encode(), f" (call {i + 1} of {len(prepared)})")

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
