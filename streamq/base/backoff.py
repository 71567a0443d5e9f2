"""Retry delays: exponential backoff with full jitter (pure, no I/O)."""

from __future__ import annotations

import random


def compute_backoff(retries: int, base_s: float, cap_s: float,
                    rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``retries + 1``.

    Full jitter (a uniform draw from 0 to the exponential ceiling) spreads a burst
    of failures out, so workers do not retry in lockstep against a sick dependency.
    """
    ceiling = min(cap_s, base_s * (2 ** min(retries, 32)))
    return (rng or random).uniform(0, ceiling)
