"""Periodic tasks: the schedules an app defines (``@app.periodic``, ``app.add_periodic``)
and their ticks. There is no beat process: every worker process of the app fires them
(``streamq.worker.periodic``), and the server decides, by its own clock and in one
script call per tick (``periodic.lua``), which single call enqueues each tick.

Ticks are a pure function of the definition, so every worker computes the same ones:
``cron`` ticks are the expression's matches in ``tz`` (croniter; a sixth field is
seconds); ``every`` ticks are the whole multiples of the interval since 1970-01-01
UTC (``every=30``: at :00 and :30 of each minute). A new schedule, or one whose
definition changed, starts with the first tick after a worker installs it: nothing
fires at once.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..base.errors import ConfigurationError, StreamQError
from ..base.settings import check_queue_name
from ..data.message import Message
from .task import Task

if TYPE_CHECKING:
    from .app import StreamQ

MIN_EVERY_S = 0.1
"""The shortest ``every``: a worker looks at its schedules about this often at most."""

LATE_GRACE_S = 1.0
"""With ``catch_up=False``, a tick no worker reached within this long (half the
interval, for shorter ones) counts as missed and is skipped."""


def _ms_of(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True, eq=False)
class Schedule:
    """One periodic schedule: a task called with fixed arguments at each tick."""

    name: str
    task: Task[Any, Any]
    queue: str
    cron: str | None
    every_ms: int | None
    tz: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    catch_up: bool
    skip_if_running: bool
    tick_kwarg: str | None
    version: str = field(default="", init=False)
    """A digest of everything that defines the schedule: a change starts it over."""

    def __post_init__(self) -> None:
        body = self.task.prepare(self.args, self._kwargs_at(0), queue=self.queue)[0].body
        digest = hashlib.sha1(json.dumps(
            [self.spec(), body if isinstance(body, str) else body.hex()]).encode())
        object.__setattr__(self, "version", digest.hexdigest()[:16])

    # -- ticks ---------------------------------------------------------------------
    def next_after(self, t_ms: int) -> int:
        """The first tick strictly after ``t_ms`` (epoch ms)."""
        if self.every_ms is not None:
            return (t_ms // self.every_ms + 1) * self.every_ms
        start = datetime.fromtimestamp(t_ms / 1000, ZoneInfo(self.tz))
        from croniter import croniter

        return _ms_of(croniter(self._cron, start).get_next(datetime))

    def latest_at(self, t_ms: int) -> int:
        """The last tick at or before ``t_ms``."""
        if self.every_ms is not None:
            return t_ms // self.every_ms * self.every_ms
        # croniter's get_prev is strictly before its start: start 1 ms later.
        start = datetime.fromtimestamp((t_ms + 1) / 1000, ZoneInfo(self.tz))
        from croniter import croniter

        return _ms_of(croniter(self._cron, start).get_prev(datetime))

    def grace_ms(self, tick_ms: int, after_ms: int) -> int | None:
        """How late a tick may be reached and still run (None: any, ``catch_up``)."""
        if self.catch_up:
            return None
        return min(round(LATE_GRACE_S * 1000), (after_ms - tick_ms) // 2)

    @property
    def _cron(self) -> str:
        assert self.cron is not None
        return self.cron

    # -- the call of one tick ------------------------------------------------------
    def _kwargs_at(self, tick_ms: int) -> dict[str, Any]:
        if self.tick_kwarg is None:
            return self.kwargs
        tick = datetime.fromtimestamp(tick_ms / 1000, UTC).isoformat(timespec="milliseconds")
        return {**self.kwargs, self.tick_kwarg: tick}

    def message(self, tick_ms: int) -> Message:
        """The call of the tick at ``tick_ms`` (a new task id each time)."""
        return self.task.prepare(self.args, self._kwargs_at(tick_ms), queue=self.queue)[0]

    # -- description ---------------------------------------------------------------
    @property
    def when(self) -> str:
        """``every 30s``, ``every 1h`` or ``cron */5 * * * * (Europe/Paris)``."""
        if self.every_ms is not None:
            return every_text(self.every_ms / 1000)
        return f"cron {self.cron}" + ("" if self.tz == "UTC" else f" ({self.tz})")

    def spec(self) -> dict[str, Any]:
        """The definition as JSON-able values (what ``streamq periodic`` shows)."""
        return {"task": self.task.name, "queue": self.queue, "cron": self.cron,
                "every_s": None if self.every_ms is None else self.every_ms / 1000,
                "tz": self.tz, "catch_up": self.catch_up,
                "skip_if_running": self.skip_if_running, "tick_kwarg": self.tick_kwarg}


def every_text(seconds: float) -> str:
    """``every 30s``, ``every 5min``, ``every 2h``."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {seconds / size:g}{unit}"
    return f"every {seconds:g}s"


_schedules: weakref.WeakKeyDictionary[StreamQ, dict[str, Schedule]] = \
    weakref.WeakKeyDictionary()


def schedules(app: StreamQ) -> dict[str, Schedule]:
    """The schedules ``app`` defines, by name (empty when none)."""
    return _schedules.get(app, {})


def add_periodic(app: StreamQ, task: Task[Any, Any] | Callable[..., Any], *,
                 cron: str | None = None, every: timedelta | float | None = None,
                 args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None,
                 queue: str | None = None, name: str | None = None, tz: str | None = None,
                 catch_up: bool = True, skip_if_running: bool = False,
                 tick_kwarg: str | None = None) -> Schedule:
    """Call ``task`` at every tick of ``cron`` (a cron expression, in time zone ``tz``,
    default UTC) or ``every`` (a ``timedelta`` or seconds), with ``args`` and
    ``kwargs``, on ``queue`` (default: the task's). ``name`` (default: the task's
    name) must be unique in the app. A plain function is registered as a task first.

    ``catch_up=True``: after a time with no worker up, the latest missed tick runs
    once (never a burst); ``False``: missed ticks are skipped. ``skip_if_running``:
    a tick is skipped while the schedule's previous call is not final yet.
    ``tick_kwarg="tick"``: each call gets its tick as that keyword argument (an ISO
    8601 UTC string). Any bad input raises one ``ConfigurationError``."""
    if not isinstance(task, Task) and not callable(task):
        raise ConfigurationError(f"add_periodic() takes a task or a function, got {task!r}")
    label = f"periodic schedule {name or getattr(task, 'name', None) or _name_of(task)!r}"
    try:
        cron, every_ms, zone = _when(cron, every, tz)
        if not isinstance(task, Task):  # once the schedule's times are known to be right
            task = app.task(task)
        if tick_kwarg is not None and not (isinstance(tick_kwarg, str) and
                                           tick_kwarg.isidentifier()):
            raise ConfigurationError(f"tick_kwarg must be a keyword name, got {tick_kwarg!r}")
        if skip_if_running and task.options.ignore_result:
            raise ConfigurationError(
                f"skip_if_running needs the task's record to know when a call is done, and "
                f"task {task.name} has ignore_result=True; drop one of them")
        name = task.name if name is None else name
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ConfigurationError(f"name must be a non-empty string without spaces, got "
                                     f"{name!r}")
        known = _schedules.setdefault(app, {})
        if name in known:
            raise ConfigurationError(
                f"the name is already used by another schedule (of task "
                f"{known[name].task.name}); give one of them another name=")
        schedule = Schedule(name, task, check_queue_name(queue or task.options.queue), cron,
                            every_ms, zone, tuple(args), dict(kwargs or {}), bool(catch_up),
                            bool(skip_if_running), tick_kwarg)
    except (StreamQError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{label}: {exc}") from None
    known[name] = schedule
    return schedule


def periodic(app: StreamQ, *, cron: str | None = None, every: timedelta | float | None = None,
             **options: Any) -> Callable[[Any], Any]:
    """``@app.periodic(cron=...)`` or ``@app.periodic(every=...)`` above ``@app.task``
    (or on a plain function, which becomes a task with default options): see
    ``add_periodic`` for the options. Returns the task."""
    def decorate(task: Any) -> Any:
        schedule = add_periodic(app, task, cron=cron, every=every, **options)
        return schedule.task

    return decorate


def _name_of(fn: Any) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _when(cron: str | None, every: timedelta | float | None, tz: str | None
          ) -> tuple[str | None, int | None, str]:
    """(cron, every in ms, zone name), checked."""
    if (cron is None) == (every is None):
        raise ConfigurationError("give exactly one of cron= and every=")
    if every is not None:
        if tz not in (None, "UTC"):
            raise ConfigurationError("tz= applies to cron schedules; every= ticks count "
                                     "from 1970-01-01 UTC")
        if isinstance(every, timedelta):
            seconds = every.total_seconds()
        elif isinstance(every, int | float) and not isinstance(every, bool):
            seconds = float(every)
        else:
            raise ConfigurationError(f"every must be a timedelta or seconds, got {every!r}")
        if not seconds >= MIN_EVERY_S:
            raise ConfigurationError(f"every must be at least {MIN_EVERY_S:g} seconds, got "
                                     f"{seconds:g}")
        return None, round(seconds * 1000), "UTC"
    zone = "UTC" if tz is None else tz
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"unknown time zone {zone!r}; use an IANA name such as "
                                 f"'Europe/Paris' or 'UTC'") from None
    from croniter import croniter  # at first use: it spawns `file` at import

    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ConfigurationError(f"invalid cron expression {cron!r}; use five fields "
                                 f"(minute hour day month weekday), e.g. '*/5 * * * *'")
    return cron, None, zone
