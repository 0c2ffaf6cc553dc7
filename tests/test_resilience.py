"""Tests of natsmesh.traffic._resilience: retry budgets, outlier ejection and latency windows."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh.traffic._resilience import Budget, LatencyWindow, Outliers

# -- Budget -----------------------------------------------------------------------------


def spend(budget: Budget, times: int, now: float) -> int:
    """How many of ``times`` spends at ``now`` the budget allows."""
    return sum(budget.try_spend(now) for _ in range(times))


def test_a_budget_allows_its_ratio_of_requests() -> None:
    budget = Budget(ratio=0.2, min_per_second=0, window=10.0)
    for n in range(100):
        budget.request(n * 0.01)
    assert spend(budget, 30, now=2.0) == 20
    assert budget.exhausted == 10
    assert not budget.try_spend(3.0)
    assert budget.exhausted == 11


def test_more_requests_allow_more_spends() -> None:
    budget = Budget(ratio=0.5, min_per_second=0, window=10.0)
    assert spend(budget, 5, now=0.0) == 0
    for _ in range(4):
        budget.request(1.0)
    assert spend(budget, 5, now=1.0) == 2
    for _ in range(4):
        budget.request(2.0)
    assert spend(budget, 5, now=2.0) == 2


def test_the_window_slides() -> None:
    budget = Budget(ratio=0.2, min_per_second=0, window=10.0)
    for _ in range(100):
        budget.request(0.0)
    assert spend(budget, 20, now=5.0) == 20
    # The requests at 0 still count at 10 (the window is closed), the spends at 5 too.
    assert spend(budget, 1, now=10.0) == 0
    # At 10.5 the requests have left the window but the spends have not.
    for _ in range(100):
        budget.request(10.5)
    assert spend(budget, 1, now=10.5) == 0
    # At 15.5 the spends have left too: the new requests allow 20 again.
    assert spend(budget, 30, now=15.5) == 20
    # And once every request is older than the window, nothing is left.
    assert spend(budget, 1, now=30.0) == 0


def test_the_floor_alone_allows_min_per_second_times_window() -> None:
    budget = Budget(ratio=0.2, min_per_second=2.0, window=10.0)
    assert spend(budget, 25, now=0.0) == 20
    assert budget.exhausted == 5
    assert spend(budget, 5, now=10.0) == 0
    assert spend(budget, 25, now=10.5) == 20


def test_the_floor_adds_to_the_ratio() -> None:
    budget = Budget(ratio=0.1, min_per_second=0.5, window=10.0)
    for _ in range(50):
        budget.request(0.0)
    assert spend(budget, 20, now=1.0) == 10


@pytest.mark.parametrize(
    ("ratio", "min_per_second", "window"),
    [(-0.1, 0, 10), (1.1, 0, 10), (0.2, -1, 10), (0.2, 0, 0), (0.2, 0, -1), (math.nan, 0, 10)],
)
def test_a_budget_rejects_bad_arguments(ratio: float, min_per_second: float, window: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        Budget(ratio=ratio, min_per_second=min_per_second, window=window)


@pytest.mark.parametrize(("min_per_second", "window"), [(math.nan, 10.0), (0.0, math.nan)])
def test_a_budget_rejects_nan(min_per_second: float, window: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        Budget(ratio=0.2, min_per_second=min_per_second, window=window)


def test_a_budget_keeps_only_its_window_of_requests() -> None:
    budget = Budget(ratio=0.2, min_per_second=0, window=10.0)
    # 1,000 s at 10 requests a second with no failures: try_spend is never called
    # (the hedge budget of a policy without hedging is never spent from at all).
    for n in range(10_000):
        budget.request(n * 0.1)
    # No public view of the log; only the last window's requests can ever count.
    assert len(budget._requests) <= 101


EVENTS = st.lists(
    st.tuples(st.sampled_from(["request", "spend"]), st.floats(0, 5)),
    max_size=80,
)


@given(
    ratio=st.floats(0, 1),
    min_per_second=st.floats(0, 2),
    window=st.floats(0.5, 20),
    events=EVENTS,
)
def test_spends_stay_within_the_budget_and_only_it(
    ratio: float, min_per_second: float, window: float, events: list[tuple[str, float]]
) -> None:
    budget = Budget(ratio=ratio, min_per_second=min_per_second, window=window)
    requests: list[float] = []
    spends: list[float] = []
    refused, now = 0, 0.0
    for kind, gap in events:
        now += gap
        if kind == "request":
            budget.request(now)
            requests.append(now)
            continue
        in_window = sum(1 for t in requests if t >= now - window)
        spent = sum(1 for t in spends if t >= now - window)
        allowed = ratio * in_window + min_per_second * window
        if budget.try_spend(now):
            spends.append(now)
            assert spent + 1 <= allowed + 1e-9
        else:
            refused += 1
            assert spent + 1 > allowed - 1e-9  # refused only when the budget is used up
    assert budget.exhausted == refused


# -- Outliers ---------------------------------------------------------------------------

FOUR = ["a", "b", "c", "d"]


def outliers(*, failures: int = 3, base: float = 30.0, max_percent: float = 50.0) -> Outliers:
    return Outliers(consecutive_failures=failures, base_ejection=base, max_percent=max_percent)


def fail(tracker: Outliers, instance: str, times: int, now: float, population: int = 4) -> bool:
    """Fail ``instance`` ``times`` times; whether the last failure ejected it."""
    results = [tracker.failure(instance, now, population) for _ in range(times)]
    assert not any(results[:-1])
    return results[-1]


@pytest.mark.parametrize("threshold", [1, 3, 5])
def test_ejects_after_exactly_the_consecutive_failures(threshold: int) -> None:
    tracker = outliers(failures=threshold)
    results = [tracker.failure("a", 0.0, 4) for _ in range(threshold)]
    assert results == [False] * (threshold - 1) + [True]
    assert tracker.available(FOUR, 0.0) == ["b", "c", "d"]
    assert tracker.ejected_total == 1


def test_a_success_resets_the_count() -> None:
    tracker = outliers(failures=3)
    assert not fail(tracker, "a", 2, now=0.0)
    tracker.success("a")
    assert not fail(tracker, "a", 2, now=0.0)
    assert tracker.available(FOUR, 0.0) == FOUR
    assert tracker.failure("a", 0.0, 4)


def test_a_success_of_an_unknown_instance_is_harmless() -> None:
    tracker = outliers()
    tracker.success("x")
    assert tracker.available(FOUR, 0.0) == FOUR


def test_an_ejected_instance_is_readmitted_after_the_period() -> None:
    tracker = outliers(base=30.0)
    assert fail(tracker, "a", 3, now=100.0)
    assert "a" not in tracker.available(FOUR, 129.999)
    assert tracker.available(FOUR, 130.0) == FOUR


def test_failures_while_ejected_do_not_eject_again() -> None:
    tracker = outliers(base=30.0)
    assert fail(tracker, "a", 3, now=0.0)
    assert not fail(tracker, "a", 3, now=10.0)
    assert tracker.ejected_total == 1
    assert tracker.available(FOUR, 30.0) == FOUR


def test_each_ejection_lasts_longer_up_to_ten_times_base() -> None:
    tracker = outliers(base=30.0, max_percent=100.0)
    now, lasted = 0.0, []
    for _ in range(13):
        assert fail(tracker, "a", 3, now=now)
        start = now
        while "a" not in tracker.available(FOUR, now):
            now += 1.0
        lasted.append(now - start)
        tracker.success("a")
    assert lasted == [30.0 * n for n in range(1, 11)] + [300.0] * 3


def test_available_returns_every_candidate_when_all_are_ejected() -> None:
    tracker = outliers(max_percent=100.0)
    for instance in FOUR:
        assert fail(tracker, instance, 3, now=0.0)
    assert tracker.available(FOUR, 1.0) == FOUR


def test_available_keeps_unknown_candidates_and_their_order() -> None:
    tracker = outliers()
    assert fail(tracker, "b", 3, now=0.0)
    assert tracker.available(["z", "a", "b", "y"], 1.0) == ["z", "a", "y"]


def test_never_more_than_max_percent_are_ejected() -> None:
    tracker = outliers(base=30.0, max_percent=50.0)
    assert fail(tracker, "a", 3, now=0.0)
    assert fail(tracker, "b", 3, now=0.0)
    assert not fail(tracker, "c", 3, now=0.0)
    assert not fail(tracker, "c", 1, now=10.0)
    assert tracker.available(FOUR, 10.0) == ["c", "d"]
    # Once "a" and "b" are back, the failures of "c" still count: the next one ejects it.
    assert fail(tracker, "c", 1, now=30.0)
    assert tracker.available(FOUR, 30.0) == ["a", "b", "d"]


@pytest.mark.parametrize(
    ("population", "max_percent", "most"),
    [(4, 50.0, 2), (4, 25.0, 1), (4, 20.0, 0), (10, 10.0, 1), (10, 35.0, 3), (3, 100.0, 3)],
)
def test_the_share_of_ejected_instances(population: int, max_percent: float, most: int) -> None:
    tracker = outliers(failures=1, max_percent=max_percent)
    ejected = sum(tracker.failure(f"i{n}", 0.0, population) for n in range(population))
    assert ejected == most


def test_forget_drops_the_state_of_instances_that_left() -> None:
    tracker = outliers(base=30.0, max_percent=100.0)
    assert fail(tracker, "a", 3, now=0.0)  # first ejection: 30 s
    assert fail(tracker, "a", 3, now=40.0)  # second: 60 s
    assert not fail(tracker, "b", 2, now=40.0)
    tracker.forget({"b", "c", "d"})
    assert tracker.available(FOUR, 41.0) == FOUR
    # "a" starts afresh: a full count of failures, and a first ejection's period.
    assert not fail(tracker, "a", 2, now=50.0)
    assert fail(tracker, "a", 1, now=50.0)
    assert tracker.available(FOUR, 80.0) == FOUR
    # "b" was kept, with its failures.
    assert fail(tracker, "b", 1, now=50.0)


@given(
    threshold=st.integers(1, 4),
    max_percent=st.floats(1, 99),
    population=st.integers(1, 8),
    events=st.lists(
        st.tuples(st.integers(0, 7), st.booleans(), st.floats(0, 20)),
        max_size=100,
    ),
)
def test_ejections_respect_the_share_and_leave_someone(
    threshold: int,
    max_percent: float,
    population: int,
    events: list[tuple[int, bool, float]],
) -> None:
    tracker = outliers(failures=threshold, base=10.0, max_percent=max_percent)
    instances = [f"i{n}" for n in range(population)]
    most = math.floor(population * max_percent / 100 + 1e-9)
    now = 0.0
    for index, ok, gap in events:
        now += gap
        instance = instances[index % population]
        if ok:
            tracker.success(instance)
        else:
            tracker.failure(instance, now, population)
        available = tracker.available(instances, now)
        assert available
        assert set(available) <= set(instances)
        assert population - len(available) <= most


# -- LatencyWindow ----------------------------------------------------------------------


def test_no_percentile_until_twenty_samples() -> None:
    window = LatencyWindow()
    for n in range(19):
        window.add(float(n))
        assert window.percentile(50) is None
    window.add(19.0)
    assert len(window) == 20
    assert window.percentile(50) == 10.0


@pytest.mark.parametrize(
    ("p", "expected"),
    [(0, 1.0), (1, 2.0), (50, 51.0), (94.5, 95.0), (95, 96.0), (99, 100.0), (99.9, 100.0)],
)
def test_percentile_of_a_known_list(p: float, expected: float) -> None:
    window = LatencyWindow()
    values = [float(n) for n in range(1, 101)]
    random.Random(3).shuffle(values)
    for value in values:
        window.add(value)
    # The sample at index floor(n * p / 100) of the sorted window: above p % of it.
    assert window.percentile(p) == expected


def test_the_window_keeps_only_the_last_samples() -> None:
    window = LatencyWindow(size=30)
    for n in range(100):
        window.add(float(n))
    assert len(window) == 30
    assert window.percentile(0) == 70.0
    assert window.percentile(100) == 99.0
    window.add(1000.0)
    assert len(window) == 30
    assert window.percentile(0) == 71.0
    assert window.percentile(100) == 1000.0


def test_rank_is_the_share_at_or_below() -> None:
    window = LatencyWindow()
    assert window.rank(1.0) == 0.0
    for n in range(1, 101):
        window.add(float(n))
    assert window.rank(0.5) == 0.0
    assert window.rank(50.0) == 0.5
    assert window.rank(50.5) == 0.5
    assert window.rank(100.0) == 1.0
    window.add(0.0)
    assert window.rank(0.5) == pytest.approx(1 / 101)


@given(
    samples=st.lists(st.floats(0, 60), min_size=20, max_size=200, unique=True),
    p=st.floats(0, 100),
)
def test_a_percentile_is_a_sample_with_p_percent_below_it(samples: list[float], p: float) -> None:
    window = LatencyWindow(size=64)
    for seconds in samples:
        window.add(seconds)
    kept = samples[-64:]
    value = window.percentile(p)
    assert value in kept
    below = sum(1 for s in kept if s < value) / len(kept)
    assert below <= p / 100 + 1e-9
    assert window.rank(value) >= p / 100 - 1e-9
