"""Tests of natsmesh _balance: subset choice, failover chains, Peak EWMA, p2c and hashing."""

from __future__ import annotations

import math
import random
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsmesh.traffic._balance import PeakEwma, choose_subset, failover_chain, pick_hash, pick_p2c
from natsmesh.traffic._routes import HeaderMatch, Subset

CANARY = [Subset(name="v1", weight=90), Subset(name="v2", weight=10)]

# -- choose_subset: header matches ------------------------------------------------------

ALWAYS_V2 = HeaderMatch(headers={"x-canary": "always"}, subset="v2")
BETA_V3 = HeaderMatch(headers={"x-user": "beta"}, subset="v3")
BOTH_V3 = HeaderMatch(headers={"x-canary": "always", "x-user": "beta"}, subset="v3")


@pytest.mark.parametrize(
    ("matches", "headers", "expected"),
    [
        # A match beats a weighted draw that would have picked v1.
        ([ALWAYS_V2], {"x-canary": "always"}, "v2"),
        # Header names match whatever their case, on either side.
        ([ALWAYS_V2], {"X-CANARY": "always"}, "v2"),
        ([HeaderMatch(headers={"X-Canary": "always"}, subset="v2")], {"x-canary": "always"}, "v2"),
        # Values are exact: no match, so the draw decides.
        ([ALWAYS_V2], {"x-canary": "Always"}, "v1"),
        ([ALWAYS_V2], {"x-other": "always"}, "v1"),
        ([ALWAYS_V2], {}, "v1"),
        # The first match in order wins.
        ([ALWAYS_V2, BOTH_V3], {"x-canary": "always", "x-user": "beta"}, "v2"),
        ([BOTH_V3, ALWAYS_V2], {"x-canary": "always", "x-user": "beta"}, "v3"),
        ([BETA_V3, ALWAYS_V2], {"x-canary": "always"}, "v2"),
        # A match on two headers needs both.
        ([BOTH_V3], {"x-canary": "always"}, "v1"),
        ([BOTH_V3], {"x-user": "beta"}, "v1"),
        ([BOTH_V3], {"X-User": "beta", "X-Canary": "always", "x-extra": "1"}, "v3"),
    ],
)
def test_header_match_wins_over_weights(
    matches: list[HeaderMatch], headers: dict[str, str], expected: str
) -> None:
    assert choose_subset(CANARY, matches, headers, rand=0.0) == expected


def test_a_match_needs_no_subsets() -> None:
    assert choose_subset([], [ALWAYS_V2], {"x-canary": "always"}, rand=0.5) == "v2"


@pytest.mark.parametrize(
    ("matches", "headers"), [([], {}), ([], {"x-canary": "always"}), ([ALWAYS_V2], {"x": "y"})]
)
def test_no_subsets_and_no_match_is_none(
    matches: list[HeaderMatch], headers: dict[str, str]
) -> None:
    assert choose_subset([], matches, headers, rand=0.5) is None


# -- choose_subset: weighted draw -------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "rand", "expected"),
    [
        ([90, 10], 0.0, "s0"),
        ([90, 10], 0.5, "s0"),
        ([90, 10], 0.899, "s0"),
        ([90, 10], 0.9, "s1"),
        ([90, 10], 0.999, "s1"),
        ([90, 10], math.nextafter(1.0, 0.0), "s1"),
        ([20, 30, 50], 0.1999, "s0"),
        ([20, 30, 50], 0.2, "s1"),
        ([20, 30, 50], 0.4999, "s1"),
        ([20, 30, 50], 0.5, "s2"),
        ([100], 0.0, "s0"),
        ([100], math.nextafter(1.0, 0.0), "s0"),
        # A zero weight is never drawn, wherever it sits.
        ([0, 100], 0.0, "s1"),
        ([50, 0, 50], 0.5, "s2"),
        ([100, 0], math.nextafter(1.0, 0.0), "s0"),
    ],
)
def test_weighted_draw_is_exact_at_the_boundaries(
    weights: list[int], rand: float, expected: str
) -> None:
    subsets = [Subset(name=f"s{i}", weight=w) for i, w in enumerate(weights)]
    assert choose_subset(subsets, [], {}, rand) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_90_10_split_holds_over_many_draws(seed: int) -> None:
    rng = random.Random(seed)
    drawn = Counter(choose_subset(CANARY, [], {}, rng.random()) for _ in range(10_000))
    assert set(drawn) == {"v1", "v2"}
    assert 8_700 <= drawn["v1"] <= 9_300


@st.composite
def weights_summing_to_100(draw: st.DrawFn) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, 100), max_size=6)))
    bounds = [0, *cuts, 100]
    return [b - a for a, b in pairwise(bounds)]


@given(weights=weights_summing_to_100(), rand=st.floats(0, 1, exclude_max=True))
def test_the_drawn_subset_has_weight(weights: list[int], rand: float) -> None:
    subsets = [Subset(name=f"s{i}", weight=w) for i, w in enumerate(weights)]
    chosen = choose_subset(subsets, [], {}, rand)
    assert {s.name: s.weight for s in subsets}[chosen] > 0


# -- failover_chain ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "failover", "expected"),
    [
        (None, {}, [None]),
        (None, {"a": "b"}, [None]),
        ("a", {}, ["a"]),
        ("a", {"b": "c"}, ["a"]),
        ("a", {"a": "b"}, ["a", "b"]),
        ("a", {"a": "b", "b": "c", "x": "a"}, ["a", "b", "c"]),
        # Cycles stop before the first repeat.
        ("a", {"a": "a"}, ["a"]),
        ("a", {"a": "b", "b": "a"}, ["a", "b"]),
        ("x", {"x": "a", "a": "b", "b": "c", "c": "a"}, ["x", "a", "b", "c"]),
    ],
)
def test_failover_chain(first: str | None, failover: dict[str, str], expected: list[str]) -> None:
    assert failover_chain(first, failover) == expected


NAMES = st.sampled_from("abcdef")


@given(first=NAMES, failover=st.dictionaries(NAMES, NAMES))
def test_failover_chain_follows_edges_without_repeats(first: str, failover: dict[str, str]) -> None:
    chain = failover_chain(first, failover)
    assert chain[0] == first
    assert len(set(chain)) == len(chain)
    for a, b in pairwise(chain):
        assert a is not None
        assert failover[a] == b
    # It stops only where the map ends or would repeat.
    last = chain[-1]
    assert last is not None
    assert last not in failover or failover[last] in chain


# -- PeakEwma ---------------------------------------------------------------------------


def test_an_unmeasured_instance_has_no_load() -> None:
    assert PeakEwma().load(now=100.0) == 0.0
    assert PeakEwma(outstanding=5).load(now=100.0) == 0.0


def test_a_slow_sample_raises_the_estimate_at_once() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(0.1, now=100.0)
    assert ewma.estimate == 0.1
    ewma.observe(2.0, now=100.0)
    assert ewma.estimate == 2.0


def test_a_fast_sample_pulls_the_estimate_down_with_tau() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(1.0, now=0.0)
    ewma.observe(0.1, now=10.0)
    weight = math.exp(-1.0)
    assert ewma.estimate == pytest.approx(1.0 * weight + 0.1 * (1 - weight))


def test_fast_samples_decay_the_estimate_toward_them() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(1.0, now=0.0)
    seen = []
    for second in range(1, 51):
        ewma.observe(0.1, now=float(second))
        seen.append(ewma.estimate)
    assert all(a > b for a, b in pairwise(seen))
    assert all(e > 0.1 for e in seen)
    assert seen[-1] < 0.11


def test_a_sample_at_the_same_instant_does_not_pull_the_estimate_down() -> None:
    ewma = PeakEwma(tau=10.0)
    ewma.observe(1.0, now=5.0)
    ewma.observe(0.1, now=5.0)
    assert ewma.estimate == 1.0
    ewma.observe(0.1, now=4.0)  # a clock that went back counts as no time passed
    assert ewma.estimate == 1.0


def test_a_shorter_tau_forgets_faster() -> None:
    quick, slow = PeakEwma(tau=1.0), PeakEwma(tau=100.0)
    for ewma in (quick, slow):
        ewma.observe(1.0, now=0.0)
        ewma.observe(0.1, now=2.0)
    assert quick.estimate < slow.estimate


@pytest.mark.parametrize(
    ("estimate", "outstanding", "load"), [(0.2, 0, 0.2), (0.2, 3, 0.8), (1.5, 1, 3.0)]
)
def test_load_is_estimate_times_outstanding_plus_one(
    estimate: float, outstanding: int, load: float
) -> None:
    ewma = PeakEwma(estimate=estimate, outstanding=outstanding, stamp=50.0)
    assert ewma.load(now=50.0) == pytest.approx(load)
    assert ewma.load(now=49.0) == pytest.approx(load)  # a clock that went back: no fading


def test_load_fades_while_nothing_is_observed() -> None:
    ewma = PeakEwma(tau=10.0, outstanding=1)
    ewma.observe(2.0, now=0.0)
    assert ewma.load(now=10.0) == pytest.approx(2.0 * math.exp(-1.0) * 2)
    fading = [ewma.load(now=float(t)) for t in range(0, 100, 10)]
    assert all(a > b for a, b in pairwise(fading))
    assert ewma.estimate == 2.0  # reading the load changes nothing


@given(
    st.lists(
        st.tuples(st.floats(0, 10), st.floats(0, 100)),
        min_size=1,
        max_size=30,
    )
)
def test_the_estimate_stays_between_the_last_sample_and_the_peak(
    samples: list[tuple[float, float]],
) -> None:
    ewma, now = PeakEwma(tau=10.0), 0.0
    for seconds, gap in samples:
        now += gap
        ewma.observe(seconds, now)
        # A blend of equal values may gain or lose an ulp.
        assert seconds <= ewma.estimate * (1 + 1e-12)
    assert ewma.estimate <= max(s for s, _ in samples) * (1 + 1e-12)


# -- pick_p2c ---------------------------------------------------------------------------


def test_p2c_without_candidates_raises() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        pick_p2c([], lambda _: 0.0, random.Random(0))


def test_p2c_with_one_candidate_picks_it() -> None:
    assert pick_p2c(["only"], lambda _: 99.0, random.Random(0)) == "only"


def test_p2c_picks_the_less_loaded_of_the_two_it_samples() -> None:
    candidates = ["idle", "b", "c", "d", "e"]
    asked: list[str] = []

    def load(candidate: str) -> float:
        asked.append(candidate)
        return 0.0 if candidate == "idle" else 1.0

    rng = random.Random(7)
    chosen = Counter[str]()
    for _ in range(10_000):
        asked.clear()
        pick = pick_p2c(candidates, load, rng)
        chosen[pick] += 1
        assert len(set(asked)) == 2  # two distinct candidates compared
        assert pick in asked
        if pick != "idle":
            assert "idle" not in asked
    # "idle" is in 2 of every 5 sampled pairs, and wins each time it is.
    assert 3_700 <= chosen["idle"] <= 4_300
    assert set(chosen) == set(candidates)


@given(
    loads=st.lists(st.floats(0, 100), min_size=2, max_size=2, unique=True),
    seed=st.integers(0, 2**32),
)
def test_p2c_between_two_always_picks_the_lower_load(loads: list[float], seed: int) -> None:
    by_name = dict(zip(["a", "b"], loads, strict=True))
    pick = pick_p2c(list(by_name), by_name.__getitem__, random.Random(seed))
    assert by_name[pick] == min(loads)


@given(
    loads=st.lists(st.floats(0, 100), min_size=1, max_size=10),
    seed=st.integers(0, 2**32),
)
def test_p2c_picks_a_candidate_and_never_the_single_worst(loads: list[float], seed: int) -> None:
    by_name = {f"i{n}": load for n, load in enumerate(loads)}
    pick = pick_p2c(list(by_name), by_name.__getitem__, random.Random(seed))
    assert pick in by_name
    worst = max(loads)
    if len(loads) > 1 and loads.count(worst) == 1:
        assert by_name[pick] < worst


# -- pick_hash --------------------------------------------------------------------------

KEYS = [f"key-{n}" for n in range(1_000)]
INSTANCES = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
    min_size=2,
    max_size=6,
    unique=True,
)


def test_hash_without_candidates_raises() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        pick_hash([], "key")


@given(candidates=INSTANCES, key=st.text(max_size=20))
def test_hash_is_deterministic_and_ignores_order(candidates: list[str], key: str) -> None:
    pick = pick_hash(candidates, key)
    assert pick in candidates
    assert pick_hash(candidates, key) == pick
    assert pick_hash(list(reversed(candidates)), key) == pick


@settings(max_examples=20)
@given(candidates=INSTANCES, data=st.data())
def test_removing_a_candidate_moves_only_its_keys(
    candidates: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(candidates))
    rest = [c for c in candidates if c != gone]
    before = {key: pick_hash(candidates, key) for key in KEYS}
    after = {key: pick_hash(rest, key) for key in KEYS}
    for key in KEYS:
        if before[key] != gone:
            assert after[key] == before[key]


@settings(max_examples=20)
@given(candidates=INSTANCES)
def test_adding_a_candidate_takes_keys_only_onto_it(candidates: list[str]) -> None:
    new, old = candidates[0], candidates[1:]
    for key in KEYS:
        was, now = pick_hash(old, key), pick_hash(candidates, key)
        assert now in (was, new)


def test_hash_spreads_keys_evenly() -> None:
    candidates = [f"instance-{n}" for n in range(5)]
    spread = Counter(pick_hash(candidates, f"user-{n}") for n in range(10_000))
    assert set(spread) == set(candidates)
    for count in spread.values():
        assert 1_600 <= count <= 2_400
