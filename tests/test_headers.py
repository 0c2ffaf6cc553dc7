"""Tests of natsmesh.wire._headers: budgets, trace context and caller-supplied headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh.wire._headers import (
    BUDGET,
    ERROR_CODE,
    MAX_BUDGET_MS,
    MAX_HEADER_VALUE,
    TRACEPARENT,
    Trace,
    check_user_headers,
    format_budget,
    new_trace,
    parse_attempt,
    parse_budget,
    parse_traceparent,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

# -- budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("abc", None),
        ("", None),
        ("1.5", None),
        ("0", 0.0),
        ("-5", -0.005),
        ("1500", 1.5),
        ("99999999999999999999", MAX_BUDGET_MS / 1000),
        (str(MAX_BUDGET_MS + 1), MAX_BUDGET_MS / 1000),
    ],
)
def test_parse_budget(value: str | None, seconds: float | None) -> None:
    assert parse_budget(value) == seconds


def test_a_budget_of_thousands_of_digits_is_unreadable_or_capped() -> None:
    parsed = parse_budget("9" * 5000)
    assert parsed is None or parsed == MAX_BUDGET_MS / 1000


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (1.0, "1000"),
        (1.9999, "1999"),
        (0.0009, "0"),
        (0.0, "0"),
        (-3.0, "0"),
        (86400.0, "86400000"),
    ],
)
def test_format_budget_rounds_down(seconds: float, header: str) -> None:
    assert format_budget(seconds) == header


@given(seconds=st.floats(min_value=0, max_value=MAX_BUDGET_MS / 1000))
def test_a_formatted_budget_never_promises_more_than_is_left(seconds: float) -> None:
    parsed = parse_budget(format_budget(seconds))
    assert parsed is not None
    assert seconds - 0.001 < parsed <= seconds


@pytest.mark.parametrize(
    ("value", "attempt"),
    [(None, 1), ("1", 1), ("3", 3), ("0", 1), ("-2", 1), ("x", 1), ("99999", 1), ("9999", 9999)],
)
def test_parse_attempt(value: str | None, attempt: int) -> None:
    assert parse_attempt(value) == attempt


# -- traceparent ------------------------------------------------------------------------


def test_traceparent_parses() -> None:
    trace = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-01")
    assert trace == Trace(TRACE_ID, SPAN_ID, "01")


_hex = "0123456789abcdef"


@given(
    trace_id=st.text(_hex, min_size=32, max_size=32).filter(lambda s: set(s) != {"0"}),
    span_id=st.text(_hex, min_size=16, max_size=16).filter(lambda s: set(s) != {"0"}),
    flags=st.text(_hex, min_size=2, max_size=2),
)
def test_traceparent_round_trip(trace_id: str, span_id: str, flags: str) -> None:
    trace = Trace(trace_id, span_id, flags)
    assert parse_traceparent(trace.header()) == trace


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}0-01",
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00-{TRACE_ID[:-1]}g-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01\r\nX: y",
    ],
)
def test_traceparent_rejects_malformed(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_new_trace_is_valid() -> None:
    trace = new_trace()
    assert parse_traceparent(trace.header()) == trace


def test_child_keeps_the_trace_and_changes_the_span() -> None:
    parent = Trace(TRACE_ID, SPAN_ID, "00")
    children = [parent.child() for _ in range(20)]
    for child in children:
        assert child.trace_id == TRACE_ID
        assert child.flags == "00"
        assert child.span_id != SPAN_ID
        assert parse_traceparent(child.header()) == child
    assert len({c.span_id for c in children}) > 1


# -- caller-supplied headers ----------------------------------------------------------------


def test_check_user_headers_accepts_plain_headers() -> None:
    headers = {"X-Tenant": "acme", "Idempotency-Key": "k-1", "x.y~z": "", "A": "é ünïcode"}
    assert check_user_headers(headers) == headers


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nInjected: 1", "a\0b", "\n"])
def test_check_user_headers_rejects_cr_lf_nul_in_values(value: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        check_user_headers({"X-Ok": value})


@pytest.mark.parametrize(
    "name", ["", "X Y", "X:Y", "X\r\nY", "X\0", "Ünï", "a" * 129, "X(Y)", "X@Y", "X\tY"]
)
def test_check_user_headers_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid header name"):
        check_user_headers({name: "v"})


@pytest.mark.parametrize(
    "name",
    [
        BUDGET,
        BUDGET.lower(),
        BUDGET.upper(),
        TRACEPARENT,
        "TraceParent",
        ERROR_CODE,
        "nats-service-error",
        "MESH-ERROR-KIND",
        "mesh-attempt",
        "Mesh-Caller",
        "status",
    ],
)
def test_check_user_headers_rejects_reserved_names(name: str) -> None:
    with pytest.raises(ValueError, match="set by the mesh"):
        check_user_headers({name: "1"})


def test_check_user_headers_bounds_value_length() -> None:
    assert check_user_headers({"X": "v" * MAX_HEADER_VALUE}) == {"X": "v" * MAX_HEADER_VALUE}
    with pytest.raises(ValueError, match="at most"):
        check_user_headers({"X": "v" * (MAX_HEADER_VALUE + 1)})


@pytest.mark.parametrize("value", [None, 1, b"bytes"])
def test_check_user_headers_rejects_non_string_values(value: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        check_user_headers({"X": value})  # type: ignore[dict-item]
