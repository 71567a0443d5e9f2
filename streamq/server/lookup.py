"""Finding a task's message where it still is, for ``streamq result`` (its arguments).

A record keeps no arguments (they can be large, and a record outlives its message
by ``result_ttl``), so they are read from the message while it exists: in the
queue's delayed set (SCHEDULED, RETRY: one HGET), in its dead-letter stream
(FAILURE, DEAD: until purged or requeued) or in its stream (PENDING, STARTED:
undelivered or in flight). Once a task succeeded its message is gone. The stream
scans are bounded (``SCAN_LIMIT`` entries each), so a look-up on a huge backlog
answers quickly, and they read only; nothing here writes.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any, NamedTuple

from ..base import keys
from ..data import record
from ..data.record import Status
from .connection import Connection

SCAN_LIMIT = 20_000
"""Entries read at most from one stream while looking for a message."""
CLOCK_SLACK_MS = 15 * 60 * 1000
"""How far before the record's enqueue time (the producer's clock) a stream scan
starts: a stream entry id is the server's clock, which may be behind."""
_PAGE = 500


class Found(NamedTuple):
    where: str
    """``"delayed"``, ``"dead letters"`` or ``"stream"``."""
    raw: bytes


def find_message(connection: Connection, ns: str, queue: str, task_id: str,
                 rec: dict[str, Any]) -> Found | None:
    """The encoded message of ``task_id`` (its record ``rec``), or None when it is
    gone (a success) or not where its status says it should be."""
    client = connection.client
    status = rec.get(record.STATUS)
    # The message's own envelope writes the id right after the version: a cheap test
    # of a raw entry before anything is decoded.
    needle = b'"id":' + encode_basestring(task_id).encode("utf-8") + b","
    order = {Status.SCHEDULED: ("delayed", "stream"), Status.RETRY: ("delayed", "stream"),
             Status.FAILURE: ("dead letters",), Status.DEAD: ("dead letters",),
             Status.PENDING: ("stream", "delayed"), Status.STARTED: ("stream", "delayed")}
    try:
        places = order.get(Status(str(status)), ())
    except ValueError:  # no record, or a status this version does not know
        places = ()
    for where in places:
        if where == "delayed":
            raw = client.hget(keys.delayed_messages(ns, queue), task_id)
            if isinstance(raw, bytes):
                return Found(where, raw)
        elif where == "dead letters":
            found = _scan(client, keys.dead(ns, queue), "-", task_id.encode("utf-8"),
                          by_field=True)
            if found is not None:
                return Found(where, found)
        else:
            since = int(rec.get(record.ENQUEUED_MS) or 0) - CLOCK_SLACK_MS
            found = _scan(client, keys.stream(ns, queue), f"{max(0, since)}-0", needle)
            if found is not None:
                return Found(where, found)
    return None


def _scan(client: Any, stream: str, start: str, needle: bytes, *, by_field: bool = False
          ) -> bytes | None:
    """The ``m`` field of the first entry from ``start`` whose ``id`` field is ``needle``
    (``by_field``: dead letters carry it) or whose message contains it."""
    read = 0
    while read < SCAN_LIMIT:
        page = client.xrange(stream, start, "+", count=_PAGE)
        for _entry, fields in page:
            raw = fields.get(b"m", b"")
            if (fields.get(b"id") == needle) if by_field else (needle in raw):
                return bytes(raw)
        read += len(page)
        if len(page) < _PAGE:
            return None
        last = page[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    return None
