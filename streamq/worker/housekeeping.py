"""The housekeeping thread of one worker process. Every tick it
- hands prefetched entries back when the current task runs long, so batching never
  strands work behind a slow task;
- marks a task that runs long enough for someone to look as STARTED;
- writes held outcomes that wait behind a long task;
- promotes due delayed messages;
and every heartbeat it refreshes the idle time of every entry the process holds
(so a long task is never reclaimed while its process lives) and the worker's
registration.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..data.message import now_ms
from ..data.outcome import Released

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger(__name__)

_TICK_S = 0.01
_FLUSH_AGE_S = 0.02
_STARTED_AFTER_S = 0.02


class Housekeeping:
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.settings = consumer.settings
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="streamq-housekeeping")
        self._marked: str | None = None  # the entry whose task was last marked STARTED

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        next_hb = next_promote = 0.0
        while not self._halt.wait(_TICK_S):
            try:
                now = time.monotonic()
                self._release_if_stuck(now)
                self._mark_started(now)
                self._flush_if_stale(now)
                if now >= next_promote:
                    next_promote = now + self.settings.promote_interval_s
                    for q in self.consumer.queues:
                        self.consumer.link.delayed.promote(q, now_ms())
                if now >= next_hb:
                    next_hb = now + self.settings.heartbeat_s
                    self._heartbeat()
            except Exception as exc:  # keep the thread alive through server blips
                log.warning("Housekeeping failed (will retry): %s", exc)
                self._halt.wait(0.5)

    def _release_if_stuck(self, now: float) -> None:
        c = self.consumer
        with c.lock:
            if c.current is None or not c.buffer or \
                    now - c.current_since < self.settings.release_after_s:
                return
            items = [Released(d) for d in c.buffer]
            c.buffer.clear()
        c.link.transport.run(c.writer.pack(items))
        log.info("Handed back %d prefetched message(s).", len(items))

    def _mark_started(self, now: float) -> None:
        c = self.consumer
        # Holding the lock while writing means the final record (held after the
        # consumer clears ``running``) can never be overwritten by STARTED.
        with c.lock:
            r = c.running
            if r is None or r.delivery.entry_id == self._marked or now - r.since < _STARTED_AFTER_S:
                return
            self._marked = r.delivery.entry_id
            c.link.records.mark_started(r.delivery.queue, r.task_id, c.name,
                                        r.delivery.deliveries)

    def _flush_if_stale(self, now: float) -> None:
        c = self.consumer
        with c.lock:
            stale = bool(c.outcomes) and c.current is not None and \
                now - c.outcomes_since >= _FLUSH_AGE_S
        if stale:
            c.flush()

    def _heartbeat(self) -> None:
        c = self.consumer
        for q, ids in c.held().items():
            lost = set(c.recovery.heartbeat(q, ids))
            if lost:
                log.warning("%d message(s) on queue %s were reclaimed by another worker; "
                            "this process will not run them.", len(lost), q)
                c.drop(q, lost)
        if c.worker_info is not None:
            c.link.registry.heartbeat(c.worker_id, c.worker_info)
