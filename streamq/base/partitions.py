"""Partitioned queues: one logical queue spread over N streams (``app.queue``).

Partition ``k`` of queue ``orders`` is the queue ``orders#k`` (or ``orders#k.n``):
its name is its Redis Cluster hash tag, and the suffix ``n`` is the first one that
puts the tag's slot in the k-th N-th of the slot space, so the partitions spread
evenly over the slots, and so over a cluster's nodes, whatever their number. The
names are computed, never stored: every process derives the same ones.

A ``partition_key`` picks a partition by a stable hash (CRC-32: the same key lands on
the same partition in every process and release); calls without one are spread in
turn.
"""

from __future__ import annotations

import binascii
import functools
import zlib

from .errors import ConfigurationError

SLOTS = 16384
MAX_PARTITIONS = 256
SEPARATOR = "#"


def tag_slot(tag: str) -> int:
    """The cluster slot of keys whose hash tag is ``tag`` (Redis's CRC16 XMODEM)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@functools.lru_cache(maxsize=256)
def names(queue: str, count: int) -> tuple[str, ...]:
    """The partition queues of ``queue``, in partition order."""
    out = []
    for k in range(count):
        lo, hi = k * SLOTS // count, (k + 1) * SLOTS // count
        n = 0
        name = f"{queue}{SEPARATOR}{k}"
        while not lo <= tag_slot(name) < hi:
            n += 1
            name = f"{queue}{SEPARATOR}{k}.{n}"
        out.append(name)
    return tuple(out)


def index_of_key(key: str, count: int) -> int:
    return zlib.crc32(key.encode()) % count


def logical(queue: str) -> str:
    """The logical queue of a partition's name (any other name is its own)."""
    base, sep, rest = queue.rpartition(SEPARATOR)
    return base if sep and base and rest.split(".", 1)[0].isdigit() else queue


def check(queue: str, count: object) -> int:
    """``count`` as a number of partitions of ``queue``, else a one-line error."""
    if SEPARATOR in queue:
        raise ConfigurationError(
            f"a partitioned queue's name may not hold {SEPARATOR!r} (its partitions' names "
            f"do): {queue!r}")
    if not isinstance(count, int) or isinstance(count, bool) or \
            not 1 <= count <= MAX_PARTITIONS:
        raise ConfigurationError(
            f"partitions of queue {queue!r} must be a whole number from 1 to "
            f"{MAX_PARTITIONS}, got {count!r}")
    return count
