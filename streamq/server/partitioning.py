"""The number of partitions of a queue, as the server knows it (``ns:partitions``).

The first process that uses a partitioned queue records its number of partitions;
every later one checks that it declares the same. A different number would route a
key to another partition than the calls before it (and so break its order), so it
is refused while any partition of the recorded layout holds work, and taken over
once they are all empty.
"""

from __future__ import annotations

from ..base import keys
from ..base.errors import BrokerError, ConfigurationError
from ..base.partitions import names
from .connection import Connection


def check_count(connection: Connection, ns: str, queue: str, count: int) -> None:
    """Record ``count`` for ``queue``, or check it against the recorded one."""
    client = connection.client
    key = keys.partitions(ns)
    try:
        client.hsetnx(key, queue, count)
    except BrokerError as exc:  # a full server: check what is recorded, record later
        if exc.code != "OOM":
            raise
    stored = int(client.hget(key, queue) or count)
    if stored == count:
        return
    pipe = client.pipeline(transaction=False)  # one round trip (one per node on a cluster)
    for name in names(queue, stored):
        pipe.xlen(keys.stream(ns, name))
        pipe.zcard(keys.delayed(ns, name))
    held = sum(int(n) for n in pipe.execute())
    if held:
        raise ConfigurationError(
            f"queue {queue!r} has {stored} partitions on the server, holding {held} "
            f"task(s); it is declared here with {count}. The number of partitions of a "
            f"queue is fixed while it holds work: declare {stored}, or drain the queue "
            f"first")
    client.hset(key, queue, count)  # (a full server refuses it: the error says so)
