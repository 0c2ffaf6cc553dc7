"""The pure side of observation: the meter, the wire checks, the aggregate's windows."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh.traffic._aggregate import Aggregate
from natsmesh.traffic._meter import Meter, outcome_of, quantile
from natsmesh.wire import _observe as _wire
from natsmesh.wire._errors import DeadlineExceeded, NoResponders, RemoteError
from natsmesh.wire._observe import _N_BUCKETS, BUCKETS_MS


def test_meter_counts_by_key_and_bucket() -> None:
    meter = Meter()
    meter.record("pricing", "quote", "v1", "ok", 0.7)
    meter.record("pricing", "quote", "v1", "ok", 3000.0)
    meter.record("pricing", "quote", None, "deadline", 10.0)
    rows = {r[:4]: r for r in meter.rows()}
    ok = rows[("pricing", "quote", "v1", "ok")]
    assert ok[4] == 2
    assert ok[5] == pytest.approx(3000.7)
    assert ok[6][1] == 1
    assert ok[6][-1] == 1
    assert rows[("pricing", "quote", "", "deadline")][6][BUCKETS_MS.index(10.0)] == 1


def test_meter_is_bounded() -> None:
    meter = Meter(max_series=3)
    for i in range(10):
        meter.record("svc", f"e{i}", None, "unknown_endpoint", 1.0)
    assert len(meter) == 3


def test_outcomes_name_the_error() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(NoResponders("x", service="s", endpoint="e", subject="s.e")) == (
        "no_responders"
    )
    assert outcome_of(DeadlineExceeded("x", service="s", endpoint="e", subject="")) == "deadline"
    e404 = RemoteError("x", code=404, kind="service", service="s", endpoint="e", subject="")
    e500 = RemoteError("x", code=500, kind="service", service="s", endpoint="e", subject="")
    assert outcome_of(e404) == "client_error"
    assert outcome_of(e500) == "server_error"
    assert outcome_of(KeyError("x")) == "other"


def test_quantile_interpolates_inside_buckets() -> None:
    buckets = [0] * _N_BUCKETS
    buckets[BUCKETS_MS.index(10.0)] = 100  # all in (5, 10]
    assert quantile(buckets, 0.5) == pytest.approx(7.5)
    assert quantile([0] * _N_BUCKETS, 0.5) is None
    buckets[-1] = 1000  # mostly beyond the last bound
    assert quantile(buckets, 0.99) == BUCKETS_MS[-1]


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_quantile_stays_within_the_data_bucket_range(latencies: list[float]) -> None:
    meter = Meter()
    for latency in latencies:
        meter.record("s", "e", None, "ok", latency)
    buckets = meter.rows()[0][6]
    p99 = quantile(buckets, 0.99)
    assert p99 is not None
    assert 0 <= p99 <= BUCKETS_MS[-1]


# -- the wire ---------------------------------------------------------------------------------


def test_a_summary_round_trips() -> None:
    meter = Meter()
    meter.record("catalog", "get", None, "ok", 1.5)
    parsed = _wire.parse_summary(_wire.summary(meter.epoch, "east", meter.rows()))
    assert parsed.epoch == meter.epoch
    assert parsed.zone == "east"
    assert parsed.rows == tuple(meter.rows())


def _row(**change: Any) -> list[Any]:
    row: dict[str, Any] = {
        "service": "catalog",
        "endpoint": "get",
        "subset": "",
        "outcome": "ok",
        "count": 1,
        "sum": 1.0,
        "buckets": [1] + [0] * (_N_BUCKETS - 1),
    }
    row.update(change)
    return list(row.values())


def _packed(rows: Any, **change: Any) -> bytes:
    return msgpack.packb({"v": 1, "e": 1, "z": "", "r": rows, **change})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x80" * 1000,  # a map of empty maps: not a summary
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"v": 2, "e": 1, "r": []}),
        _packed(None),
        _packed([_row(service="a.b")]),  # a subject token separator in a label
        _packed([_row(service="*")]),
        _packed([_row(service="x" * 200)]),
        _packed([_row(service="<script>")]),
        _packed([_row(outcome="pwned")]),
        _packed([_row(count=-1)]),
        _packed([_row(count=2**63)]),
        _packed([_row(count=True)]),
        _packed([_row(count=5)]),  # buckets say 1
        _packed([_row(sum=math.nan)]),
        _packed([_row(sum=-1.0)]),
        _packed([_row(sum="1")]),
        _packed([_row(buckets=[1])]),
        _packed([_row()[:6]]),
        _packed([_row()], e=-5),
        _packed([_row()], z="a b"),
        _packed([_row()] * (_wire.MAX_ROWS + 1)),
        b"\x91" + b"\x91" * 100_000,  # deep nesting
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
        b"\xdb" + (2**31).to_bytes(4, "big"),  # a string claiming 2 GiB
        b"x" * (_wire.MAX_SUMMARY + 1),
    ],
)
def test_hostile_summaries_are_rejected(payload: bytes) -> None:
    with pytest.raises(_wire.Rejected):
        _wire.parse_summary(payload)


@pytest.mark.parametrize(
    "subject",
    [
        "mesh._ctl.observe.interest",
        "mesh._ctl.observe.metrics.",
        "mesh._ctl.observe.metrics.a",
        "mesh._ctl.observe.metrics.a.",
        "mesh._ctl.observe.metrics.a.b.c",
        "mesh._ctl.observe.metrics.a/b.c",
        "mesh._ctl.observe.metrics.a b.c",
        "mesh._ctl.other.a.b",
        "other._ctl.observe.metrics.a.b",
        "mesh._ctl.observe.metrics." + "x" * 200 + ".b",
    ],
)
def test_only_summary_subjects_name_a_sender(subject: str) -> None:
    with pytest.raises(_wire.Rejected):
        _wire.sender_of(subject, "mesh")


def test_identity_tokens_cannot_widen_a_subject() -> None:
    assert _wire.identity_token("a.b *>\r\n/") == "a_b______"
    assert _wire.identity_token("") == "_"
    assert len(_wire.identity_token("x" * 1000)) == _wire.MAX_LABEL
    assert _wire.reporter_subject("mesh", "orders/abc", 1) == "mesh._ctl.observe.metrics.orders.abc"
    assert _wire.reporter_subject("mesh", "a.b", 255) == "mesh._ctl.observe.metrics.a_b.ff"
    assert _wire.sender_of("mesh._ctl.observe.metrics.orders.abc", "mesh") == "orders/abc"
    assert _wire.caller_of("orders/abc") == "orders"


@pytest.mark.parametrize(
    "batch",
    [
        [["get", "gateway", 200, 1.0, "", 1.0, "extra"]],
        [["get", "gateway", "200", 1.0, "", 1.0]],
        [["get", "gateway", 200, -1.0, "", 1.0]],
        [["get", "gateway", 200, math.inf, "", 1.0]],
        [["a.b", "gateway", 200, 1.0, "", 1.0]],
        [["get", "<img src=x>", 200, 1.0, "", 1.0]],
        [["get", "gateway", 200, 1.0, "", 1.0]] * (_wire.MAX_TAP_BATCH + 1),
    ],
)
def test_hostile_tap_batches_are_rejected(batch: list[Any]) -> None:
    with pytest.raises(_wire.Rejected):
        _wire.parse_samples(msgpack.packb({"v": 1, "s": batch}))


# -- the aggregate ------------------------------------------------------------------------------


def _summary(epoch: int, count: int, outcome: str = "ok") -> _wire.Summary:
    buckets = [0] * _N_BUCKETS
    buckets[3] = count
    return _wire.Summary(
        epoch, "z", (("pricing", "quote", "", outcome, count, count * 3.0, buckets),)
    )


def test_windows_are_differences_and_rates_per_second() -> None:
    agg = Aggregate(window=10)
    agg.add("orders/a", _summary(1, 100), now=0.0)
    agg.add("orders/a", _summary(1, 120), now=2.0)
    agg.add("orders/a", _summary(1, 160), now=4.0)
    edge = agg.edges(4.0)[("orders", "pricing")]
    assert edge.requests == 60
    assert edge.rps == pytest.approx(15.0)
    assert edge.success == 1.0
    assert edge.p99 is not None


def test_one_summary_gives_no_rate_yet() -> None:
    agg = Aggregate()
    agg.add("orders/a", _summary(1, 1_000_000), now=0.0)
    assert agg.edges(0.0) == {}


def test_a_restart_retires_the_old_counts_so_totals_never_go_back() -> None:
    agg = Aggregate()
    agg.add("orders/a", _summary(1, 100), now=0.0)
    agg.add("orders/a", _summary(2, 5), now=2.0)  # new epoch: restarted
    total = sum(c.count for c in agg.totals().values())
    assert total == 105
    agg.add("orders/a", _summary(2, 3), now=4.0)  # went back in the same epoch: a reset too
    assert sum(c.count for c in agg.totals().values()) == 108


def test_a_quiet_caller_leaves_the_windows_but_not_the_totals() -> None:
    agg = Aggregate(quiet=30)
    agg.add("orders/a", _summary(1, 10), now=0.0)
    agg.add("orders/a", _summary(1, 20), now=2.0)
    agg.expire(100.0)
    assert agg.edges(100.0) == {}
    assert agg.callers() == []
    assert sum(c.count for c in agg.totals().values()) == 20


def test_failures_make_the_success_ratio() -> None:
    agg = Aggregate()
    for t, n in ((0.0, 0), (2.0, 10)):
        agg.add("orders/a", _summary(1, n, "server_error"), now=t)
    assert agg.edges(2.0)[("orders", "pricing")].success == 0.0
