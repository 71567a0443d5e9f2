"""The supervisor's heartbeat thread: the worker's registration, and the leases of the
entries its processes hold.

It lives in the supervisor, which never runs task code, so a task that holds its
process's interpreter lock (a long C call) or stalls it cannot make the worker look
dead or let its entries be reclaimed while they are running. Each process still sends
its own heartbeat too, which tells it which entries it lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..base.errors import BrokerError
from ..server.link import ServerLink
from ..server.recovery import Recovery

log = logging.getLogger(__name__)


class Leases:
    def __init__(self, link: ServerLink, worker_id: str, info: Callable[[], dict[str, Any]],
                 consumers: list[str], queues: list[str], period_s: float) -> None:
        self.link = link
        self.worker_id = worker_id
        self.info = info
        self.recoveries = [Recovery(link.transport, link.broker, link.settings, c, 0)
                           for c in consumers]
        self.queues = queues
        self.period_s = period_s
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="streamq-leases")

    def start(self) -> None:
        self.beat()  # registered before any process reads
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        try:
            self.link.registry.heartbeat(self.worker_id, self.info())
            for recovery in self.recoveries:
                for q in self.queues:
                    self._renew(recovery, q)
        except Exception as exc:  # a server blip: the next beat tries again
            log.warning("Worker heartbeat failed (will retry): %s", exc)

    @staticmethod
    def _renew(recovery: Recovery, queue: str) -> None:
        try:
            recovery.renew(queue)
        except BrokerError as exc:
            # No group: a queue nobody has read yet (the first start of a worker), or a
            # server that lost it. Nothing of ours is pending there; the processes'
            # reads create the group, so this is not worth a warning.
            if exc.code != "NOGROUP":
                raise

    def _loop(self) -> None:
        while not self._halt.wait(self.period_s):
            self.beat()
