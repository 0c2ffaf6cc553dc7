"""The default policy is stated once, in the README, and that statement is the code's."""

from __future__ import annotations

from pathlib import Path

from natsmesh import ServicePolicy
from natsmesh.traffic._routes import parse_routes
from natsmesh.traffic._traffic import DEFAULT_POLICY

ROOT = Path(__file__).parent.parent


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"


def _names(values: object) -> str:
    order = ["no_responders", "overloaded", "unavailable", "timeout"]
    assert isinstance(values, frozenset)
    return ", ".join(f"`{v}`" for v in sorted(values, key=order.index))


def default_table(policy: ServicePolicy) -> list[str]:
    """The README's table of defaults, rendered from ``policy``."""
    r, o = policy.retries, policy.outlier
    none = all(
        not getattr(policy, f) for f in ("subsets", "matches", "failover", "mirror", "fault")
    )
    rows = [
        ("`timeout`", _seconds(policy.timeout), "the whole call's budget, retries included"),
        (
            "`load_balancer`",
            f"`{policy.load_balancer}`",
            "peak EWMA x in flight among the registry's instances;"
            " the queue group without a controller",
        ),
        ("`retries.attempts`", str(r.attempts), "tries per call, the first included"),
        (
            "`retries.per_try_timeout`",
            _seconds(r.per_try_timeout),
            "each try may use what is left of the budget",
        ),
        (
            "`retries.retry_on`",
            _names(r.retry_on),
            "`unavailable` (and `timeout`, when listed) for idempotent endpoints only",
        ),
        (
            "`retries.backoff`, `retries.max_backoff`",
            f"{_seconds(r.backoff)}, {_seconds(r.max_backoff)}",
            "exponential, with jitter",
        ),
        (
            "`retries.budget_ratio`, `retries.budget_min_per_second`",
            f"{r.budget_ratio:g}, {r.budget_min_per_second:g}",
            f"retries add at most {r.budget_ratio * 100:g} % of the last 10 s of requests,"
            f" plus {r.budget_min_per_second:g} per second",
        ),
        ("`hedging`", "none" if policy.hedging is None else "?", "no second copies"),
        (
            "`outlier.consecutive_failures`, `outlier.base_ejection`,"
            " `outlier.max_ejection_percent`",
            f"{o.consecutive_failures}, {_seconds(o.base_ejection)}, {o.max_ejection_percent:g} %",
            "out of p2c/hash choice, or of the queue groups through the controller",
        ),
        (
            "`subsets`, `matches`, `failover`, `mirror`, `fault`, `zones`",
            "none" if none and not policy.zones else "?",
            "every instance of the service alike",
        ),
    ]
    return [f"| {a} | {b} | {c} |" for a, b, c in rows]


def test_the_readme_states_the_default_policy_of_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = "\n".join(
        ["| field | default | meaning |", "| --- | --- | --- |", *default_table(DEFAULT_POLICY)]
    )
    assert table in readme


def test_an_unlisted_service_and_an_empty_listing_get_the_same_policy() -> None:
    # One truth: the models' defaults are the default policy.
    assert ServicePolicy() == DEFAULT_POLICY
    assert parse_routes("[services.catalog]\n").services["catalog"] == DEFAULT_POLICY


def test_the_default_policy_is_safe_for_slow_handlers() -> None:
    retries = DEFAULT_POLICY.retries
    assert retries.per_try_timeout is None
    assert "timeout" not in retries.retry_on
    assert DEFAULT_POLICY.hedging is None


def test_the_route_file_points_at_the_one_statement() -> None:
    text = (ROOT / "examples" / "routes.toml").read_text()
    header = text.split("\n\n", 1)[0]
    assert 'README.md, "The default policy"' in header
    # No second statement of values that could drift from the table.
    assert "no retries" not in header
    assert " 5 s " not in header
    assert "### The default policy" in (ROOT / "README.md").read_text()
