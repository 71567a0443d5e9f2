"""Firing the app's periodic schedules from a worker process (a housekeeping duty).

Every process of every worker of the app does this, and none of them decides alone:
each due tick is one ``periodic.lua`` call per process, which the server runs against
its own clock and the schedule's stored next tick, so exactly one call fires it and
the others learn the new state from their reply. A process keeps no state of its own
that matters: one that dies or restarts reads the schedule's state again, so ticks
are neither skipped nor doubled.

Between ticks nothing is sent: a process sleeps until the next tick it knows of (by
its estimate of the server's clock, from the replies' ``TIME``), looking again at
least every second, and touches each schedule every ``TOUCH_S`` (which keeps the
schedule from retiring). All the schedules due at one moment share one round trip.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, NamedTuple

from ..api.hooks import TaskEvent
from ..api.periodic import Schedule, schedules
from ..data import record
from ..server.periodic import TAKEOVER_AFTER_MS, Answer, PeriodicStore, Step
from ..server.transport import Packed

if TYPE_CHECKING:
    from ..api.app import StreamQ

log = logging.getLogger(__name__)

TOUCH_S = 20.0
"""How often a process touches every schedule even when none is due: well within
``TAKEOVER_AFTER_MS``, so a live worker's definition is never taken over."""

_LOOK_S = 1.0  # the longest sleep between looks at the local schedule


class _Known(NamedTuple):
    next_ms: int | None
    last_id: str


class PeriodicDuty:
    """The schedules of one app, fired from one process."""

    def __init__(self, app: StreamQ, defined: list[Schedule]) -> None:
        self.app = app
        self.schedules = defined
        self.store = PeriodicStore(app.server.transport, app.settings.namespace)
        self._known: dict[str, _Known] = {}
        self._deferring: set[str] = set()  # another definition is in force
        self._offset_ms: float | None = None  # the server's clock minus this one's
        self._wake = 0.0  # time.time() of the next look
        self._touch_at = 0.0
        self._noted = False

    @classmethod
    def of(cls, app: StreamQ) -> PeriodicDuty | None:
        """The duty of ``app``'s schedules whose task this process has; None if none."""
        defined = [s for s in schedules(app).values() if s.task.name in app.registry]
        return cls(app, defined) if defined else None

    def server_now_ms(self, local_s: float | None = None) -> int:
        local = time.time() if local_s is None else local_s
        return round(local * 1000 + (self._offset_ms or 0.0))

    def periodic_tasks(self, _now: float) -> None:
        """Fire what is due (the housekeeping thread calls this every tick)."""
        local = time.time()
        if local < self._wake:
            return
        self._wake = local + _LOOK_S  # until this look succeeds: no tight loop in an outage
        if self._offset_ms is None:
            sent = time.time()
            server = self.store.server_ms()
            self._offset_ms = server - (sent + time.time()) * 500
        now = self.server_now_ms()
        touch = local >= self._touch_at
        packed = Packed()
        if touch or not self._noted:  # again at each touch: a reader may prune the index
            self.store.note(packed, {s.name: s.queue for s in self.schedules})
        first = len(packed)
        asked: list[tuple[Schedule, Step]] = []
        for s in self.schedules:
            known = self._known.get(s.name)
            due = known is not None and known.next_ms is not None and known.next_ms <= now
            if due or touch or known is None:
                # Deferring, a due tick is the other definition's: only ask whether
                # that one still has workers.
                step = self._step(s, known, now, fire=due and s.name not in self._deferring)
                self.store.pack(packed, step)
                asked.append((s, step))
        if asked:
            sent = time.time()
            replies = self.store.run(packed)
            back = time.time()
            self._noted = True
            for (s, step), reply in zip(asked, replies[first:], strict=True):
                answer = self.store.answer(reply)
                self._offset_ms = answer.now_ms - (sent + back) * 500
                self._note(s, step, answer)
        if touch:
            self._touch_at = local + TOUCH_S
        self._wake = self._next_look()

    def _step(self, s: Schedule, known: _Known | None, now: int, *, fire: bool) -> Step:
        base = Step(s.name, s.queue, s.version, s.spec(), s.next_after(now))
        if not fire or known is None or known.next_ms is None:
            return base
        tick = max(known.next_ms, s.latest_at(now))
        after = s.next_after(max(tick, now))
        message = s.message(tick)
        signer = self.app.signer
        encoded = message.encode() if signer is None else signer.sign(message.encode())
        rec = None if message.ignore_result else \
            record.enqueued(message.task, message.queue, now, None)
        return base._replace(expected_ms=known.next_ms, tick_ms=tick, after_ms=after,
                             grace_ms=s.grace_ms(tick, after),
                             skip_if_running=s.skip_if_running, last_id=known.last_id,
                             task_id=message.id, encoded=encoded, record=rec,
                             record_ttl_s=self.app.settings.result_ttl)

    def _note(self, s: Schedule, step: Step, answer: Answer) -> None:
        outcome = answer.outcome
        if outcome == "other":
            if s.name not in self._deferring:
                log.warning("Periodic schedule %s is defined otherwise by other workers "
                            "(other code); this process leaves it to them, and takes over "
                            "once none of them has been up for %d s.", s.name,
                            TAKEOVER_AFTER_MS // 1000)
            self._deferring.add(s.name)
            # Ask again at its next tick, or in a second if its workers are gone.
            again = max(answer.next_ms or 0, answer.now_ms + round(_LOOK_S * 1000))
            self._known[s.name] = _Known(again, answer.last_id)
            return
        if s.name in self._deferring:
            self._deferring.discard(s.name)
        if outcome == "stale":  # computed from a clock estimate that was behind
            self._known.pop(s.name, None)
            return
        if outcome == "installed":
            log.info("Periodic schedule %s (%s, task %s) starts: first tick %s.", s.name,
                     s.when, s.task.name, _utc(answer.next_ms))
        elif outcome == "fired":
            log.info("Periodic schedule %s enqueued task %s (%s) for its tick of %s.",
                     s.name, step.task_id, s.task.name, _utc(step.tick_ms))
            if self.app.hooks.wants("enqueued"):
                self.app.hooks.emit("enqueued", TaskEvent(step.task_id, s.task.name,
                                                          s.queue, 1))
        elif outcome.startswith("skipped:"):
            why = "its last call is still running" if outcome.endswith("running") else \
                "no worker reached it in time (catch_up=False)"
            log.info("Periodic schedule %s skipped its tick of %s: %s.", s.name,
                     _utc(step.tick_ms), why)
        self._known[s.name] = _Known(answer.next_ms, answer.last_id)

    def _next_look(self) -> float:
        """When to look again (time.time()): the next known tick, within ``_LOOK_S``."""
        local = time.time()
        wake = min(local + _LOOK_S, self._touch_at)
        offset = self._offset_ms or 0.0
        for s in self.schedules:
            known = self._known.get(s.name)
            if known is None:
                return local  # not installed yet: look again at once
            if known.next_ms is not None:
                wake = min(wake, (known.next_ms - offset) / 1000)
        # A tick the server said is not due yet (this estimate runs a little ahead):
        # look again soon, never in a tight loop.
        return max(wake, local + 0.005)

    def release(self) -> None:
        """Give this process's schedules up (a clean stop): a worker running another
        definition of one may take it over at once instead of after the takeover
        time. A sibling process of the same definition just goes on."""
        packed = Packed()
        for s in self.schedules:
            if s.name not in self._deferring:
                self.store.pack(packed, Step(s.name, s.queue, s.version, s.spec(), 0),
                                release=True)
        if len(packed):
            self.store.run(packed)


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + \
        f".{ms % 1000:03d} UTC"
