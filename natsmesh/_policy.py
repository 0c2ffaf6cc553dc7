"""Pure call policy: how many times to retry, how long to wait, what is left of a budget.

No I/O and no clock of its own: callers pass ``now`` and a random source, so
every decision here is a function of its arguments and easy to test.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Retry:
    """When a call is tried again.

    Only outcomes that prove the request was not processed are retried by
    default: *no responders* (nobody got it) and *overloaded* (shed unprocessed).
    Backoff is exponential with full jitter, capped, and never outlives the budget.
    """

    attempts: int = 3
    backoff: float = 0.02
    max_backoff: float = 0.5
    on_no_responders: bool = True
    on_overloaded: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < self.backoff:
            raise ValueError("need 0 <= backoff <= max_backoff")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before try ``attempt + 1``, after try ``attempt`` (1-based) failed."""
        # The exponent is capped first: 2 ** 1024 does not fit a float.
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 64))
        return rng.uniform(ceiling / 2, ceiling)


NO_RETRY = Retry(attempts=1)


def remaining(deadline: float, now: float) -> float:
    """Seconds left until ``deadline``; never negative."""
    return max(0.0, deadline - now)


def budget(timeout: float, parent_remaining: float | None) -> float:
    """A call's budget: its own timeout, but never more than its parent has left."""
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
    return timeout if parent_remaining is None else min(timeout, parent_remaining)
