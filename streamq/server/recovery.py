"""Taking back entries nobody works on, and keeping our own from being taken.

- ``own``: entries still pending under this consumer's name (a replaced process
  reuses the name), claimed at start-up;
- ``orphans``: ours on the server but not held in memory (a read whose reply was
  lost), once they missed heartbeats;
- ``of_dead_workers``: pending for consumers of workers whose registration lapsed;
- ``autoclaim``: anything idle longer than ``claim_after_s`` (XAUTOCLAIM).
``heartbeat`` refreshes the idle time of the entries this consumer holds (only
those still its own). XCLAIM counts one more delivery, which is how a message
that keeps killing its process ends in dead letters.
"""

from __future__ import annotations

from typing import Any

from ..base import keys
from ..base.errors import BrokerError
from ..base.ids import worker_of
from ..base.settings import Settings
from ..data.outcome import Delivery
from .broker import Broker, as_str, entry_message
from .transport import Transport


class Recovery:
    """Claims for one consumer; each method reads one queue."""

    def __init__(self, transport: Transport, broker: Broker, settings: Settings,
                 consumer: str, page: int) -> None:
        self.transport = transport
        self.client = transport.connection.client
        self.broker = broker
        self.ns = settings.namespace
        self.consumer = consumer
        self.page = page

    def _stream(self, queue: str) -> str:
        return keys.stream(self.ns, queue)

    def guarded(self, queue: str, claim: Any, *args: Any) -> list[Delivery]:
        """``claim(queue, *args)``, recreating the group when the server lost it
        (NOGROUP): there is nothing to reclaim from a group that is gone."""
        try:
            return claim(queue, *args)  # type: ignore[no-any-return]
        except BrokerError as exc:
            if exc.code != "NOGROUP":
                raise
            self.broker.recreate_groups([queue])
            return []

    def own(self, queue: str, charge: set[str] | None = None) -> list[Delivery]:
        """Entries still pending under this consumer's name. Only those in ``charge``
        (the ones a crashed predecessor was working on) count one more delivery: the
        others never started, and charging them would send a whole prefetched batch
        to dead letters after a few fast crashes."""
        charge = charge or set()
        stream = self._stream(queue)
        # Any: redis-py types every value of an entry as bytes | str | int.
        pending: list[dict[str, Any]] = self.client.xpending_range(
            stream, keys.GROUP, "-", "+", 1000, consumername=self.consumer)
        ids = [as_str(p["message_id"]) for p in pending]
        suspects = [i for i in ids if i in charge]
        charged = self._claim(queue, suspects, 0) if suspects else []
        rest = [i for i in ids if i not in charge]
        if not rest:
            return charged
        # JUSTID leaves the delivery counter alone; the messages are read with XRANGE.
        self.client.xclaim(stream, keys.GROUP, self.consumer, 0, rest,  # type: ignore[arg-type]
                           justid=True)
        pipe = self.client.pipeline(transaction=False)
        for i in rest:
            pipe.xrange(stream, i, i)
        counts = {as_str(p["message_id"]): int(p["times_delivered"]) for p in pending}
        out = []
        for i, found in zip(rest, pipe.execute(), strict=True):
            fields = found[0][1] if found else None
            out.append(Delivery(queue, i, entry_message(fields), counts.get(i, 1)))
        return out + charged  # the suspect last: the others need not wait on it

    def orphans(self, queue: str, held: set[str], min_idle_ms: int) -> list[Delivery]:
        stale: list[dict[str, Any]] = self.client.xpending_range(
            self._stream(queue), keys.GROUP, "-", "+", self.page, consumername=self.consumer,
            idle=min_idle_ms)
        ids = [i for i in (as_str(p["message_id"]) for p in stale) if i not in held]
        return self._claim(queue, ids, min_idle_ms)

    def of_dead_workers(self, queue: str, live: set[str], min_idle_ms: int
                        ) -> list[Delivery]:
        stream = self._stream(queue)
        out: list[Delivery] = []
        for c in self.client.xinfo_consumers(stream, keys.GROUP):
            name = as_str(c["name"])
            if worker_of(name) in live:
                continue
            if int(c.get("pending", 0)) == 0:
                if int(c.get("idle", 0)) > min_idle_ms:
                    self.client.xgroup_delconsumer(stream, keys.GROUP, name)
                continue
            room = self.page - len(out)
            if room <= 0:
                break
            stale: list[dict[str, Any]] = self.client.xpending_range(
                stream, keys.GROUP, "-", "+", room, consumername=name, idle=min_idle_ms)
            out += self._claim(queue, [as_str(p["message_id"]) for p in stale], min_idle_ms)
        return out

    def autoclaim(self, queue: str, min_idle_ms: int, live: set[str] | None = None
                  ) -> list[Delivery]:
        """Entries idle longer than ``min_idle_ms``, except those of ``live`` workers:
        a live worker's supervisor renews its leases, and each worker is judged by its
        own heartbeat (``Registry.live``), not by this one's ``claim_after_s``."""
        if live is None:
            reply = self.client.xautoclaim(self._stream(queue), keys.GROUP, self.consumer,
                                           min_idle_ms, "0-0", count=self.page)
            return self._with_counts(queue, reply[1])
        idle: list[dict[str, Any]] = self.client.xpending_range(
            self._stream(queue), keys.GROUP, "-", "+", self.page, idle=min_idle_ms)
        ids = [as_str(p["message_id"]) for p in idle
               if worker_of(as_str(p["consumer"])) not in live]
        return self._claim(queue, ids, min_idle_ms)

    def _claim(self, queue: str, entry_ids: list[str], min_idle_ms: int) -> list[Delivery]:
        """XCLAIM entries to this consumer; deleted entries drop out (Redis 7+)."""
        if not entry_ids:
            return []
        # redis-py types the ids as an (invariant) List of int | bytes | str, so a
        # list[str] is refused; a Sequence would be the right type.
        claimed = self.client.xclaim(self._stream(queue), keys.GROUP, self.consumer,
                                     min_idle_ms, entry_ids)  # type: ignore[arg-type]
        return self._with_counts(queue, claimed)

    def _with_counts(self, queue: str, claimed: list[Any]) -> list[Delivery]:
        entries = [(e[0], e[1]) for e in claimed if e and e[0] is not None]
        if not entries:
            return []
        ids = [as_str(e[0]) for e in entries]
        pend: list[dict[str, Any]] = self.client.xpending_range(
            self._stream(queue), keys.GROUP, ids[0], ids[-1], len(ids) + 100,
            consumername=self.consumer)
        counts = {as_str(p["message_id"]): int(p["times_delivered"]) for p in pend}
        return [Delivery(queue, i, entry_message(f), counts.get(i, 1))
                for i, (_, f) in zip(ids, entries, strict=True)]

    def renew(self, queue: str) -> int:
        """Refresh the idle time of every entry pending for this consumer (its lease),
        from outside the process that runs its tasks; returns how many."""
        return int(self.transport.call("renew", [self._stream(queue)],
                                       [keys.GROUP, self.consumer, 100_000]))

    def heartbeat(self, queue: str, entry_ids: list[str]) -> list[str]:
        """Refresh the idle time of entries still ours; returns the ids we lost."""
        if not entry_ids:
            return []
        lost = self.transport.call("heartbeat", [self._stream(queue)],
                                   [keys.GROUP, self.consumer, *entry_ids])
        return [as_str(x) for x in lost]
