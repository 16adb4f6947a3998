"""Reconnect delays: exponential from ``base_s``, capped at ``cap_s``, with jitter so that many streams
that failed together (a switch rebooting) do not reconnect in lockstep."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """The wait before reconnect ``attempt`` (1 for the first): a uniform draw from [d/2, d], where
    d = min(cap_s, base_s * 2**(attempt - 1))."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 62))
    return (rng or random).uniform(ceiling / 2, ceiling)
