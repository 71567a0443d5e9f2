"""The durable rows of ``streamq bench``: what ``delay()`` with ``durable=True`` costs.

A producer app with ``durable=True`` calls ``delay()`` one at a time with the
server's ``appendfsync`` set to ``everysec`` and then to ``always`` (CONFIG SET; the
server's own value is put back at the end), in ``ROUNDS`` slices alternating with
plain ``delay()`` calls of another app under the server's own policy, so each ratio
compares calls seen through the same machine noise. Each slice stops after
``SLICE_BUDGET_S`` (a server that confirms only at its next fsync does about one call
a second), so the rows never hold the bench up for long. On a server that cannot be
durable (no AOF, no WAITAOF, CONFIG refused) the rows have no value and ``details``
says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..api.app import StreamQ
from ..api.task import Task
from ..base.errors import StreamQError
from . import bench_procs as bp

ROUNDS = 5
CALLS = 2000
"""At most this many calls per measurement (fewer when ``n`` is smaller)."""
SLICE_BUDGET_S = 2.0
POLICIES = ("everysec", "always")


def measure(plain: StreamQ, sink: Task[..., Any], url: str, ns: str, n: int,
            args: tuple[Any, ...], clock: bp.Clock, say: Callable[[str], None]
            ) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Calls/s of ``sink.delay()`` (a task of ``plain``, to a queue no worker reads)
    as it is and durable under each policy: ``delay_beside_durable`` and
    ``durable_<policy>`` (None when the server cannot be durable), and details."""
    durable = StreamQ(url, namespace=ns, durable=True)
    dsink = durable.task(name=sink.name, queue=sink.options.queue)(sink.fn)
    client = plain.server.connection.client
    keys = ("delay_beside_durable", *(f"durable_{p}" for p in POLICIES))
    none: dict[str, float | None] = dict.fromkeys(keys)
    try:
        before = str(client.config_get("appendfsync").get("appendfsync", ""))
        if not int(plain.server.info("persistence").get("aof_enabled", 0)):
            return none, {"durable_skipped": "the server has appendonly off"}
    except StreamQError as exc:
        return none, {"durable_skipped": f"cannot read the server's AOF settings: {exc}"}
    total = max(1, min(n, CALLS))
    say(f"durable: delay() with appendfsync {' and '.join(POLICIES)}, next to plain "
        f"delay(): {ROUNDS} alternating slices of {total} in all")
    secs = dict.fromkeys(keys, 0.0)
    calls = dict.fromkeys(keys, 0)
    try:
        dsink.delay(*args)  # not timed: the first call asks the server what it has
        for size in [total // ROUNDS + (i < total % ROUNDS) for i in range(ROUNDS)]:
            if not size:
                continue
            # Plain calls under the server's own policy: under always, a plain write
            # waits for the same fsync (before the reply), so it would hide the cost.
            if before:
                client.config_set("appendfsync", before)
            _slice(clock, "plain delay()", size, lambda: sink.delay(*args),
                   "delay_beside_durable", secs, calls)
            for policy in POLICIES:
                client.config_set("appendfsync", policy)
                _slice(clock, f"durable delay(), {policy}", size,
                       lambda: dsink.delay(*args), f"durable_{policy}", secs, calls)
    except StreamQError as exc:  # no WAITAOF, a refused CONFIG SET, NotDurableError
        return none, {"durable_skipped": " ".join(str(exc).split())}
    finally:
        try:
            if before:
                client.config_set("appendfsync", before)
        finally:
            durable.close()
    out: dict[str, float | None] = {k: round(calls[k] / secs[k], 1) for k in keys}
    return out, {"durable_calls": {k: calls[k] for k in keys},
                 "durable_appendfsync_restored": before}


def _slice(clock: bp.Clock, phase: str, size: int, step: Callable[[], Any], key: str,
           secs: dict[str, float], calls: dict[str, int]) -> None:
    """Up to ``size`` calls of ``step()`` within ``SLICE_BUDGET_S``, added up by key."""
    clock.phase = phase
    t0 = time.perf_counter()
    end = t0 + SLICE_BUDGET_S
    done = 0
    while done < size:
        step()
        done += 1
        if not done & 15:
            clock.check()
            if time.perf_counter() > end:
                break
    secs[key] += time.perf_counter() - t0
    calls[key] += done

