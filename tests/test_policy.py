"""Tests of natsmesh._policy: retry backoff and budget arithmetic."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh._policy import NO_RETRY, Retry, budget, remaining


class _Edge(random.Random):
    """A random source that always picks one end of the range, to expose the ceiling."""

    def __init__(self, *, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


HIGH = _Edge(high=True)
LOW = _Edge(high=False)

retries = st.builds(
    lambda backoff, extra, attempts: Retry(
        attempts=attempts, backoff=backoff, max_backoff=backoff + extra
    ),
    backoff=st.floats(min_value=0, max_value=10),
    extra=st.floats(min_value=0, max_value=10),
    attempts=st.integers(min_value=1, max_value=100),
)

# -- Retry ----------------------------------------------------------------------------


def test_defaults_and_no_retry() -> None:
    retry = Retry()
    assert retry.attempts >= 1
    assert retry.on_no_responders
    assert retry.on_overloaded
    assert NO_RETRY.attempts == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"backoff": -0.1},
        {"backoff": 1.0, "max_backoff": 0.5},
    ],
)
def test_retry_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- the message is not the point
        Retry(**kwargs)  # type: ignore[arg-type]


def test_delay_doubles_then_caps() -> None:
    retry = Retry(backoff=0.1, max_backoff=0.5)
    assert [retry.delay(n, HIGH) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert [retry.delay(n, LOW) for n in range(1, 6)] == pytest.approx([0.05, 0.1, 0.2, 0.25, 0.25])


def test_zero_backoff_never_waits() -> None:
    assert Retry(backoff=0, max_backoff=0).delay(5, random.Random(1)) == 0


@given(retry=retries, attempt=st.integers(min_value=1, max_value=10_000), seed=st.integers())
def test_delay_is_within_half_ceiling_and_ceiling(retry: Retry, attempt: int, seed: int) -> None:
    ceiling = retry.delay(attempt, HIGH)
    assert ceiling <= retry.max_backoff
    delay = retry.delay(attempt, random.Random(seed))
    assert ceiling / 2 <= delay <= ceiling


@given(retry=retries, attempt=st.integers(min_value=1, max_value=10_000))
def test_the_ceiling_never_shrinks_as_attempts_grow(retry: Retry, attempt: int) -> None:
    assert retry.delay(attempt + 1, HIGH) >= retry.delay(attempt, HIGH)
    assert retry.delay(attempt + 1, LOW) >= retry.delay(attempt, LOW)


def test_delay_stays_capped_for_very_many_attempts() -> None:
    # 0.02 * 2 ** 1024 does not fit a float: the exponent must be capped before it is used.
    retry = Retry(attempts=5000, backoff=0.02, max_backoff=0.5)
    assert retry.delay(1100, HIGH) == 0.5


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
