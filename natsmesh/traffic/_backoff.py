"""Pure call arithmetic: backoff between tries, and what is left of a budget.

No I/O and no clock of its own: callers pass ``now`` and a random source.
"""

from __future__ import annotations

import math
import random


def backoff(base: float, cap: float, attempt: int, rng: random.Random) -> float:
    """Seconds to wait after try ``attempt`` (1-based) failed: exponential, full-half jitter.

    The ceiling doubles per try from ``base`` up to ``cap``; the wait is drawn from
    [ceiling / 2, ceiling] so that callers that failed together do not retry together.
    """
    if base < 0 or cap < base:
        raise ValueError("need 0 <= base <= cap")
    # The exponent is capped first: 2 ** 1024 does not fit a float.
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 64))
    return rng.uniform(ceiling / 2, ceiling)


def remaining(deadline: float, now: float) -> float:
    """Seconds left until ``deadline``; never negative."""
    return max(0.0, deadline - now)


def budget(timeout: float, parent_remaining: float | None) -> float:
    """A call's budget: its own timeout, but never more than its parent has left."""
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
    return timeout if parent_remaining is None else min(timeout, parent_remaining)
