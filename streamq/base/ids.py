"""Names that identify things across processes: task ids and worker/consumer names.

A generated task id is 32 random hex digits, ``@`` and its queue
(``3f2a...6f70@default``): it names the slot of its record, so a bare id finds its
record on a cluster. A worker id is ``host:pid:token`` and each of its processes
reads as consumer ``<worker id>-<index>``; this module builds and parses both.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import NamedTuple

_HEX = frozenset("0123456789abcdef")


def new_task_id(queue: str) -> str:
    """32 random hex digits, ``@`` and the queue: an id that routes itself."""
    return f"{os.urandom(16).hex()}@{queue}"


def queue_of(task_id: str) -> str | None:
    """The queue a generated task id carries; None for an id the caller chose."""
    if len(task_id) > 33 and task_id[32] == "@" and _HEX.issuperset(task_id[:32]):
        return task_id[33:]
    return None


class WorkerId(NamedTuple):
    host: str
    pid: int
    token: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    def consumer(self, index: int) -> str:
        """The consumer name of this worker's process ``index``."""
        return f"{self}-{index}"


def new_worker_id() -> WorkerId:
    # 64 random bits: containers that share a host name and all run as pid 1 must
    # still get distinct ids.
    return WorkerId(socket.gethostname(), os.getpid(), secrets.token_hex(8))


def parse_worker_id(text: str) -> WorkerId | None:
    """``host:pid:token`` back into its parts (None if it has another shape)."""
    host, _, rest = text.rpartition(":")
    host, _, pid = host.rpartition(":")
    if not host or not pid.isdigit() or not rest:
        return None
    return WorkerId(host, int(pid), rest)


def worker_of(consumer: str) -> str:
    """The worker id of a consumer name (``<worker id>-<index>``)."""
    return consumer.rsplit("-", 1)[0]
