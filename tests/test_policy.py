"""Tests of natsmesh.traffic._backoff: backoff and budget arithmetic."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh.traffic._backoff import backoff, budget, remaining


class _Edge(random.Random):
    """A random source that always picks one end of the range, to expose the ceiling."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


HIGH = _Edge(high=True)
LOW = _Edge(high=False)

# -- backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cap", "attempt", "high"),
    [(0.1, 0.5, 1, 0.1), (0.1, 0.5, 2, 0.2), (0.1, 0.5, 3, 0.4), (0.1, 0.5, 4, 0.5), (0, 0, 5, 0)],
)
def test_backoff_doubles_up_to_the_cap(base: float, cap: float, attempt: int, high: float) -> None:
    assert backoff(base, cap, attempt, HIGH) == pytest.approx(high)
    assert backoff(base, cap, attempt, LOW) == pytest.approx(high / 2)


@pytest.mark.parametrize(("base", "cap"), [(-0.1, 1.0), (0.5, 0.1)])
def test_backoff_rejects_bad_bounds(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        backoff(base, cap, 1, HIGH)


@given(
    base=st.floats(min_value=0, max_value=10),
    extra=st.floats(min_value=0, max_value=10),
    attempt=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(),
)
def test_backoff_is_within_half_ceiling_and_ceiling(
    base: float, extra: float, attempt: int, seed: int
) -> None:
    cap = base + extra
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    wait = backoff(base, cap, attempt, random.Random(seed))
    assert ceiling / 2 <= wait <= ceiling


def test_backoff_stays_capped_for_very_many_attempts() -> None:
    # 0.02 * 2 ** 1024 does not fit a float: the exponent must be capped before it is used.
    assert backoff(0.02, 0.5, 1100, HIGH) == 0.5


# -- budget ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "parent", "expected"),
    [(5.0, None, 5.0), (5.0, 2.0, 2.0), (1.0, 3.0, 1.0), (5.0, 0.0, 0.0), (0.25, 0.25, 0.25)],
)
def test_budget_is_capped_by_what_the_parent_has_left(
    timeout: float, parent: float | None, expected: float
) -> None:
    assert budget(timeout, parent) == expected


@pytest.mark.parametrize("timeout", [0.0, -1.0, -math.inf, math.nan, math.inf])
def test_budget_rejects_timeouts_that_are_not_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        budget(timeout, None)


@given(
    timeout=st.floats(min_value=1e-6, max_value=1e6),
    parent=st.none() | st.floats(min_value=0, max_value=1e6),
)
def test_budget_never_exceeds_timeout_or_parent(timeout: float, parent: float | None) -> None:
    result = budget(timeout, parent)
    assert result <= timeout
    if parent is not None:
        assert result <= parent


@pytest.mark.parametrize(
    ("deadline", "now", "left"), [(10.0, 4.0, 6.0), (10.0, 10.0, 0.0), (10.0, 12.0, 0.0)]
)
def test_remaining_is_never_negative(deadline: float, now: float, left: float) -> None:
    assert remaining(deadline, now) == left
