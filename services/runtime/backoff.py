"""Capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["backoff_delays"]


def backoff_delays(initial: float, maximum: float) -> Iterator[float]:
    """Endless delays: ``initial * 2**n`` capped at ``maximum``, jittered to spread herds."""
    ceiling = min(initial, maximum)
    while True:
        yield random.uniform(ceiling / 2, ceiling)
        ceiling = min(ceiling * 2, maximum)
