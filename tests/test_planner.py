"""The retry planner, table-driven: one row per behaviour of the README's traffic policy.

Each row names the README sentence it checks (section "Traffic policy", unless
it says otherwise). The planner is pure: every row gives it the outcome, the
call's state, the budget state, ``now`` and a scripted random source.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from natsmesh.traffic._planner import (
    Action,
    CallState,
    Kind,
    Outcome,
    Plan,
    Why,
    decide,
    hedge_after,
    start,
)
from natsmesh.traffic._routes import ServicePolicy
from natsmesh.traffic._zones import pick, tiers

DEFAULT_RETRY_ON = frozenset({"no_responders", "overloaded", "unavailable"})
ALL_RETRY_ON = DEFAULT_RETRY_ON | {"timeout"}


class Draws(random.Random):
    """A random source that returns scripted values from ``random()``, then 0.5."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0) if self.values else 0.5


@dataclass
class Row:
    readme: str  # the sentence of the README this row checks
    outcome: Outcome
    expect: dict[str, Any]  # fields of the Plan
    state: dict[str, Any] = field(default_factory=dict)  # CallState fields over the base
    budget_left: bool = True
    now: float = 0.0
    deadline: float = 10.0


def _state(**over: Any) -> CallState:
    base: dict[str, Any] = {
        "attempts": 3,
        "idempotent": False,
        "retry_on": DEFAULT_RETRY_ON,
        "chain": (None,),
    }
    base.update(over)
    return CallState(**base)


NO_RESPONDERS = Outcome(Kind.NO_RESPONDERS)
TIMEOUT = Outcome(Kind.TIMEOUT)

ROWS = [
    Row(
        "first reply wins / decode the reply (Call a service): a reply is returned",
        Outcome(Kind.OK),
        {"action": Action.RETURN},
    ),
    Row(
        "Call a service: RemoteError, any other error reply (a 4xx, a bare 500): raised",
        Outcome(Kind.ERROR, "i1", named=True),
        {"action": Action.RETURN},
    ),
    Row(
        "No responders fails over to the next subset at once.",
        NO_RESPONDERS,
        {"action": Action.RETRY, "position": 1, "counted": False, "failover": True, "pause": 0},
        state={"chain": ("v2", "v1")},
    ),
    Row(
        "No responders fails over ... : the last subset of the chain names every one tried",
        NO_RESPONDERS,
        {"action": Action.RAISE, "why": Why.CHAIN},
        state={"chain": ("v2", "v1"), "position": 1},
    ),
    Row(
        "Overloaded and no responders ... are retried for every endpoint",
        Outcome(Kind.OVERLOADED),
        {"action": Action.RETRY, "counted": True, "spend": True},
    ),
    Row(
        "Overloaded and no responders prove the request was not processed and are retried",
        NO_RESPONDERS,
        {"action": Action.RETRY, "counted": True, "spend": True, "by_name": False},
    ),
    Row(
        "timeouts and unavailable (502/503) only for endpoints declared idempotent",
        Outcome(Kind.UNAVAILABLE),
        {"action": Action.RAISE, "why": Why.NOT_RETRYABLE},
    ),
    Row(
        "timeouts and unavailable (502/503) only for endpoints declared idempotent",
        TIMEOUT,
        {"action": Action.RAISE, "why": Why.NOT_RETRYABLE},
        state={"retry_on": ALL_RETRY_ON},
    ),
    Row(
        "timeouts and unavailable (502/503) only for endpoints declared idempotent",
        Outcome(Kind.UNAVAILABLE, "i1", named=True),
        {"action": Action.RETRY, "counted": True},
        state={"idempotent": True},
    ),
    Row(
        "The default policy: never of timeouts unless a route says so",
        TIMEOUT,
        {"action": Action.RAISE, "why": Why.NOT_RETRYABLE},
        state={"idempotent": True},
    ),
    Row(
        "retries.retry_on: timeout, when listed, for idempotent endpoints",
        Outcome(Kind.TIMEOUT, "i1", named=True),
        {"action": Action.RETRY, "counted": True, "by_name": False, "probe": False},
        state={"idempotent": True, "retry_on": ALL_RETRY_ON},
    ),
    Row(
        "In queue mode too: an error reply names its instance (Mesh-Instance), so the retry"
        " goes to another instance by name",
        Outcome(Kind.UNAVAILABLE, "i2", named=False),
        {"action": Action.RETRY, "by_name": True, "probe": False},
        state={"idempotent": True, "queue": True},
    ),
    Row(
        "issue 14: a retry after a timeout through a queue group goes by name, to an"
        " instance that answers (not back into the group, to the frozen one)",
        TIMEOUT,
        {"action": Action.RETRY, "by_name": True, "probe": True},
        state={"idempotent": True, "queue": True, "retry_on": ALL_RETRY_ON},
    ),
    Row(
        "a slow subset: a timeout fails over to the next subset of the chain",
        TIMEOUT,
        {"action": Action.RETRY, "position": 1, "failover": True, "counted": True},
        state={"idempotent": True, "retry_on": ALL_RETRY_ON, "chain": ("v2", "v1")},
    ),
    Row(
        "retries.attempts: 3 tries per call, the first included",
        Outcome(Kind.OVERLOADED),
        {"action": Action.RAISE, "why": Why.ATTEMPTS},
        state={"attempt": 3},
    ),
    Row(
        "Retries and hedges draw from budgets ..., so a failing service is not hit by a"
        " retry storm",
        Outcome(Kind.OVERLOADED),
        {"action": Action.RAISE, "why": Why.BUDGET},
        budget_left=False,
    ),
    Row(
        "Nothing outlives the budget: ... backoff and hedges all fit in it",
        Outcome(Kind.OVERLOADED),
        {"action": Action.RAISE, "why": Why.DEADLINE},
        now=9.999,
    ),
    Row(
        "A caller that retries marks its request (Mesh-Retrying); the callee's own calls"
        " then do not retry: one retrying hop per call chain",
        Outcome(Kind.OVERLOADED),
        {"action": Action.RAISE, "why": Why.ATTEMPTS},
        state={"attempts": 1},  # what the loop gives a call made under Mesh-Retrying
    ),
    Row(
        "A dead instance is out at once: no responders on an instance's own subject proves it gone",
        Outcome(Kind.NO_RESPONDERS, "i1", named=True),
        {"action": Action.RETRY, "gone": True, "counted": False, "failover": True, "pause": 0},
    ),
    Row(
        "A dead instance ...: its requests still waiting fail with InstanceLost (retried for"
        " idempotent endpoints)",
        Outcome(Kind.UNAVAILABLE, "i1", named=True),
        {"action": Action.RETRY, "counted": True},
        state={"idempotent": True},
    ),
    Row(
        "Call a service: a micro service in another language is resolved through $SRV"
        " discovery (after no responders, once)",
        NO_RESPONDERS,
        {"action": Action.REROUTE, "why": Why.ATTEMPTS},
        state={"attempt": 3, "can_reroute": True},
    ),
    Row(
        "Call a service: NoResponders, nobody serves the subject (raised at once once $SRV"
        " knows nothing more)",
        NO_RESPONDERS,
        {"action": Action.RAISE, "why": Why.ATTEMPTS},
        state={"attempt": 3, "can_reroute": False},
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}:{r.readme[:40]}" for i, r in enumerate(ROWS)])
def test_decide(row: Row) -> None:
    state = _state(**row.state)
    plan = decide(
        state,
        row.outcome,
        budget_left=row.budget_left,
        now=row.now,
        deadline=row.deadline,
        base=0.02,
        cap=0.5,
        rng=random.Random(1),
    )
    for name, value in row.expect.items():
        assert getattr(plan, name) == value, (name, plan)


def test_retries_back_off_exponentially_with_jitter() -> None:
    """'each try to another instance, with exponential backoff and jitter'"""
    pauses = []
    for attempt in (1, 2, 3, 4, 5, 6):
        state = _state(attempts=10, attempt=attempt)
        plan = decide(
            state,
            Outcome(Kind.OVERLOADED),
            budget_left=True,
            now=0.0,
            deadline=10.0,
            base=0.02,
            cap=0.5,
            rng=random.Random(attempt),
        )
        ceiling = min(0.5, 0.02 * 2 ** (attempt - 1))
        assert ceiling / 2 <= plan.pause <= ceiling
        pauses.append(plan.pause)
    assert pauses[3] > pauses[0]


def test_each_retry_goes_to_another_instance() -> None:
    """'each try to another instance': following a plan remembers who failed."""
    state = _state(idempotent=True, queue=True)
    outcome = Outcome(Kind.UNAVAILABLE, "i2", named=False)
    plan = decide(
        state, outcome, budget_left=True, now=0, deadline=9, base=0, cap=0, rng=random.Random()
    )
    state.follow(plan, outcome)
    assert state.tried == {"i2"}
    assert state.by_name
    assert state.attempt == 2


def test_the_planner_reads_the_state_and_does_not_change_it() -> None:
    state = _state(idempotent=True, retry_on=ALL_RETRY_ON, queue=True)
    before = repr(state)
    decide(state, TIMEOUT, budget_left=True, now=0, deadline=9, base=0, cap=0, rng=random.Random())
    assert repr(state) == before


def test_a_gone_instance_is_retried_elsewhere_only_once_per_instance() -> None:
    """The 'gone' retries are not counted as attempts, but bounded by instances tried."""
    state = _state()
    gone = Outcome(Kind.NO_RESPONDERS, "i1", named=True)
    plan = decide(state, gone, budget_left=True, now=0, deadline=9, base=0, cap=0, rng=Draws())
    state.follow(plan, gone)
    # The same instance again (the registry still shows it): no further free retry.
    again = decide(state, gone, budget_left=True, now=0, deadline=9, base=0, cap=0, rng=Draws())
    assert again.counted
    assert not again.gone


def test_a_reroute_starts_the_call_over() -> None:
    state = _state(can_reroute=True, attempt=3, position=0)
    state.tried.add("i1")
    state.rerouted()
    assert (state.attempt, state.position, state.gone, state.tried) == (1, 0, 0, set())
    assert not state.can_reroute


# -- before the first try ----------------------------------------------------------------

POLICY_ROWS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[float, ...], dict[str, Any]]] = [
    (
        "fault injection: a delay for its share of requests",
        {"fault": {"delay": 0.1, "delay_percent": 50}},
        {},
        (0.3,),
        {"delay": 0.1, "abort": None},
    ),
    (
        "fault injection: no delay outside its share",
        {"fault": {"delay": 0.1, "delay_percent": 50}},
        {},
        (0.7,),
        {"delay": 0.0},
    ),
    (
        "fault injection: an abort with its code for its share",
        {"fault": {"abort_code": 503, "abort_percent": 10}},
        {},
        (0.05,),
        {"abort": 503},
    ),
    (
        "subset (the first header match, else a weighted draw)",
        {
            "subsets": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}],
            "matches": [{"headers": {"x-canary": "1"}, "subset": "v2"}],
        },
        {"x-canary": "1"},
        (0.0,),
        {"chain": ("v2",)},
    ),
    (
        "a weighted draw: a 90/10 canary",
        {"subsets": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]},
        {},
        (0.95,),
        {"chain": ("v2",)},
    ),
    (
        "a weighted draw: a 90/10 canary (the 90)",
        {"subsets": [{"name": "v1", "weight": 90}, {"name": "v2", "weight": 10}]},
        {},
        (0.1,),
        {"chain": ("v1",)},
    ),
    (
        "→ failover chain",
        {
            "subsets": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
            "failover": {"v1": "v2"},
        },
        {},
        (0.1,),
        {"chain": ["v1", "v2"]},
    ),
    (
        "mirror a share of the requests to a shadow subset (fire and forget)",
        {
            "subsets": [{"name": "v1", "weight": 100}, {"name": "shadow", "weight": 0}],
            "mirror": {"subset": "shadow", "percent": 20},
        },
        {},
        (0.1, 0.1),
        {"mirror": "shadow"},
    ),
    (
        "mirror a share of the requests: not the rest",
        {
            "subsets": [{"name": "v1", "weight": 100}, {"name": "shadow", "weight": 0}],
            "mirror": {"subset": "shadow", "percent": 20},
        },
        {},
        (0.1, 0.5),
        {"mirror": None},
    ),
    (
        "for idempotent endpoints, hedge a second copy",
        {"hedging": {"delay": 0.05}},
        {},
        (),
        {"hedge": True},
    ),
]


@pytest.mark.parametrize("row", POLICY_ROWS, ids=[r[0][:40] for r in POLICY_ROWS])
def test_start(row: tuple[str, dict[str, Any], dict[str, Any], tuple[float, ...], Any]) -> None:
    _, policy, headers, draws, expect = row
    begin = start(
        ServicePolicy.model_validate(policy),
        headers,
        idempotent=True,
        conventional=True,
        rng=Draws(*draws),
    )
    for name, value in expect.items():
        assert getattr(begin, name) == value, (name, begin)


def test_hedging_is_for_idempotent_endpoints_only() -> None:
    policy = ServicePolicy.model_validate({"hedging": {"delay": 0.05}})
    begin = start(policy, {}, idempotent=False, conventional=True, rng=Draws())
    assert not begin.hedge


def test_subsets_apply_to_natsmesh_services_only() -> None:
    """A micro service found through $SRV has no subsets: one target."""
    policy = ServicePolicy.model_validate({"subsets": [{"name": "v1", "weight": 100}]})
    begin = start(policy, {}, idempotent=False, conventional=False, rng=Draws())
    assert begin.chain == (None,)


@pytest.mark.parametrize(
    ("delay", "timeout", "expect"),
    [(0.05, 1.0, 0.05), (None, 1.0, None), (1.0, 1.0, None), (2.0, 1.0, None)],
)
def test_hedge_after_a_fixed_delay_or_a_learned_percentile(
    delay: float | None, timeout: float, expect: float | None
) -> None:
    """'hedge a second copy after a fixed delay or a learned latency percentile': none
    before a percentile is learned, none that the try would not live to send.
    """
    assert hedge_after(delay, timeout) == expect


# -- where a try goes (the planner's "retry where", made by _zones.pick) -----------------

ZONED = tiers([("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")], "a", ["b"])


@pytest.mark.parametrize(
    ("readme", "exclude", "ejected", "gone", "expect"),
    [
        ("Zones: own zone first", set(), set(), set(), {"a1", "a2"}),
        ("Zones: then in the route's zones order", {"a1", "a2"}, set(), set(), {"b1"}),
        ("Zones: then any other zone", {"a1", "a2", "b1"}, set(), set(), {"c1"}),
        (
            "Outlier ejection: ... take an instance out of p2c/hash choice",
            set(),
            {"a1"},
            set(),
            {"a2"},
        ),
        (
            "A zone is passed over when every instance in it is ejected",
            set(),
            {"a1", "a2"},
            set(),
            {"b1"},
        ),
        ("A dead instance is out at once", {"a1"}, set(), {"a2"}, {"b1"}),
        (
            "each try to another instance (every one tried: the queue group)",
            {"a1", "a2", "b1", "c1"},
            set(),
            set(),
            {None},
        ),
    ],
)
def test_pick(
    readme: str, exclude: set[str], ejected: set[str], gone: set[str], expect: set[str | None]
) -> None:
    for seed in range(20):
        chosen = pick(
            ZONED,
            exclude=exclude,
            ejected=ejected.__contains__,
            load=lambda _: 0.0,
            rng=random.Random(seed),
            gone=gone,
        )
        assert chosen.instance in expect, readme


def test_plans_are_values() -> None:
    assert Plan(Action.RETURN) == Plan(Action.RETURN)
