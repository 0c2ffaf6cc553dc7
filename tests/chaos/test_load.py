"""Overload, a slow consumer and a soak (scenarios in scenarios_load.py)."""

from __future__ import annotations

import pytest

from chaos.figures import Figures

pytestmark = pytest.mark.timeout(1800)


@pytest.mark.chaos("overload")
def test_three_times_capacity_is_shed_fast_and_goodput_holds(figures: Figures) -> None:
    notes = figures.notes
    assert figures.failed == 0, figures.errors  # every refusal a fast, retryable 503
    assert notes["shed 503"] > 0
    assert notes["goodput share"] >= 0.9
    assert notes["shed p99 s"] < 1.0
    assert notes["admitted p99 s"] < 5.0  # bounded: nothing queues for the whole budget
    assert notes["after: failed"] == 0  # recovers at once
    for role in ("gateway", "busy-0"):
        before, after = figures.rss[role]
        assert after < 1.5 * before, role  # nothing queued without limit


@pytest.mark.chaos("slow-consumer")
def test_a_slow_consumer_is_dropped_visibly_and_the_callers_fail_over(
    figures: Figures,
) -> None:
    notes = figures.notes
    before, after = map(int, notes["server slow_consumers"].split(">"))
    assert after > before  # the server's /varz
    assert notes["server log"]  # "Slow Consumer Detected"
    assert notes["instance log"]  # the client's error callback, at WARNING
    assert figures.failed == 0, figures.errors
    assert figures.p99_fault < 3.0
    assert notes["instance back after s"] < 30


@pytest.mark.chaos("soak")
def test_a_soak_loses_no_call_and_no_process_grows(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.sent > 0
    grown = {role: after / before for role, (before, after) in figures.rss.items()}
    assert all(ratio <= 1.10 for ratio in grown.values()), grown
