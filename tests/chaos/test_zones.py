"""A supercluster of two zones and a leaf site (scenarios in scenarios_zones.py)."""

from __future__ import annotations

import pytest

from chaos.figures import Figures

pytestmark = pytest.mark.timeout(1800)


@pytest.mark.chaos("supercluster")
def test_calls_stay_in_their_zone_and_move_when_it_empties(figures: Figures) -> None:
    assert figures.failed == 0, figures.errors
    for client in ("eu-west-p2c", "eu-west-queue", "eu-central-p2c", "eu-central-queue"):
        assert figures.notes[f"{client} in zone"] >= 0.99, client
    for client in ("eu-west-p2c", "eu-west-queue"):
        assert figures.notes[f"{client} to eu-central while out"] == 1.0
    assert figures.notes["takeover from eu-central s"] < 20
    assert figures.converge is not None
    assert figures.converge < 25


@pytest.mark.chaos("leaf-site")
def test_a_site_keeps_its_own_calls_and_fails_fast_across_a_dropped_link(
    figures: Figures,
) -> None:
    assert figures.failed == 0, figures.errors
    assert figures.notes["cross-site failed while down"] > 0
    assert figures.notes["cross-site failures"] == ["NoResponders"]  # never a timeout
    assert figures.notes["cross-site failure p99 s"] < 0.5  # below one try's timeout
    assert figures.notes["site>hub back after s"] < 20
    assert figures.notes["hub>site back after s"] < 20
    assert figures.converge is not None
    assert figures.converge < 25


@pytest.mark.chaos("leaf-site")
def test_a_site_applies_the_hub_tables(figures: Figures) -> None:
    assert figures.notes["site tables applied"] > 0
