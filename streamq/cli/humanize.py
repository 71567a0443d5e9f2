"""Times and durations as people read them: ``2026-12-02 22:47:05.123 +00:00 (3 min
ago)``, ``1.25 s``, ``2 h 5 min``."""

from __future__ import annotations

import datetime
import time


def duration(seconds: float) -> str:
    """A duration to about three figures: ``0.4 ms``, ``125 ms``, ``1.25 s``, ``2 min 5
    s``, ``3 h 2 min``, ``2 d 4 h``."""
    s = max(0.0, seconds)
    if s < 0.001:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.3g} ms"
    if s < 60:
        return f"{s:.3g} s"
    whole = round(s)
    for big, big_unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"),
                                             (60, "min", 1, "s")):
        if whole >= big:
            rest = (whole % big) // small
            return f"{whole // big} {big_unit}" + (f" {rest} {small_unit}" if rest else "")
    return f"{whole} s"  # pragma: no cover - s >= 60 always matches a unit above


def date(ms: int) -> str:
    """Epoch milliseconds as this machine's local time, to the millisecond, with the
    zone's offset: ``2026-12-02 22:47:05.123 +00:00``."""
    when = datetime.datetime.fromtimestamp(ms / 1000).astimezone()
    offset = when.strftime("%z")
    return (f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d} "
            f"{offset[:3]}:{offset[3:]}")


def relative(ms: int, now_ms: int | None = None) -> str:
    """``3 min ago`` or ``in 5 s`` (``now`` for a time within a second of now)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    delta = (now - ms) / 1000
    if abs(delta) < 1:
        return "now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def when(ms: int, now_ms: int | None = None) -> str:
    """``date(ms) (relative(ms))``."""
    return f"{date(ms)} ({relative(ms, now_ms)})"
