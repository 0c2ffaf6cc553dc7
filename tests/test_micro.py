"""Tests of natsmesh _micro: $SRV shapes as other implementations send them, and as we dump them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pydantic
import pytest

from natsmesh.wire._micro import (
    INFO_TYPE,
    MESH_KEY,
    PING_TYPE,
    STATS_TYPE,
    EndpointInfo,
    EndpointStats,
    Info,
    Ping,
    Stats,
    dump,
    rfc3339,
)

# An INFO answer as a Go or JS micro service may send it.
FOREIGN_INFO = {
    "type": INFO_TYPE,
    "name": "adder",
    "id": "Ys5d2Q9HtkEH5dK7c1ktfq",
    "version": "1.0.0",
    "metadata": None,
    "description": "adds",
    "endpoints": [
        {
            "name": "add",
            "subject": "math.add",
            "queue_group": "q",
            "metadata": None,
            "unknown_field": [1, 2],
        }
    ],
    "api_url": "https://example.invalid",
}


def test_foreign_info_parses() -> None:
    info = Info.model_validate_json(json.dumps(FOREIGN_INFO))
    assert info.metadata == {}
    assert info.endpoints == [EndpointInfo(name="add", subject="math.add", queue_group="q")]
    assert info.endpoints[0].metadata == {}
    assert not info.is_mesh


def test_null_and_missing_endpoints_become_empty_lists() -> None:
    base = {"type": INFO_TYPE, "name": "x", "id": "1"}
    assert Info.model_validate({**base, "endpoints": None}).endpoints == []
    assert Info.model_validate(base).endpoints == []
    stats = {"type": STATS_TYPE, "name": "x", "id": "1", "endpoints": None}
    assert Stats.model_validate(stats).endpoints == []


def test_ping_with_extra_fields_and_no_version() -> None:
    ping = Ping.model_validate_json(
        b'{"type":"io.nats.micro.v1.ping_response","name":"x","id":"1","extra":true}'
    )
    assert ping.version == ""
    assert ping.metadata == {}


def test_mesh_instances_are_recognised_by_metadata() -> None:
    ping = Ping(name="x", id="1", metadata={MESH_KEY: "0.1.0"})
    assert ping.is_mesh
    assert ping.type == PING_TYPE


def test_foreign_stats_parse() -> None:
    raw = {
        "type": STATS_TYPE,
        "name": "x",
        "id": "1",
        "started": "2024-01-01T00:00:00.123Z",
        "endpoints": [
            {
                "name": "e",
                "subject": "s",
                "num_requests": 3,
                "num_errors": 1,
                "last_error": "boom",
                "processing_time": 10,
                "average_processing_time": 3,
                "data": None,
                "something_new": "ignored",
            }
        ],
    }
    stats = Stats.model_validate(raw)
    assert stats.endpoints[0].num_requests == 3
    assert stats.endpoints[0].data is None


@pytest.mark.parametrize(
    "bad",
    [
        {"type": INFO_TYPE, "id": "1"},  # no name
        {"type": INFO_TYPE, "name": "x", "id": "1", "metadata": ["a"]},
        {"type": INFO_TYPE, "name": "x" * 257, "id": "1"},
        {"type": INFO_TYPE, "name": "x", "id": "1", "endpoints": "nope"},
    ],
)
def test_invalid_answers_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Info.model_validate(bad)


def test_metadata_values_become_strings() -> None:
    ping = Ping.model_validate({"name": "x", "id": "1", "metadata": {"n": 1}})
    assert ping.metadata == {"n": "1"}


# -- dump ---------------------------------------------------------------------------------


def test_dump_omits_data_only_when_none() -> None:
    stats = Stats(
        name="x",
        id="1",
        started="2024-01-01T00:00:00Z",
        endpoints=[
            EndpointStats(name="none", subject="s"),
            EndpointStats(name="empty", subject="s", data={}),
            EndpointStats(name="full", subject="s", data={"dropped": 0, "nothing": None}),
        ],
    )
    out = json.loads(dump(stats))
    by_name = {e["name"]: e for e in out["endpoints"]}
    assert "data" not in by_name["none"]
    assert by_name["empty"]["data"] == {}
    assert by_name["full"]["data"] == {"dropped": 0, "nothing": None}
    # Every other field is always present, even when empty or zero.
    for field in ("queue_group", "num_requests", "num_errors", "last_error", "processing_time"):
        assert field in by_name["none"]
    assert out["type"] == STATS_TYPE
    assert out["metadata"] == {}
    assert out["version"] == ""


def test_dump_info_round_trips() -> None:
    info = Info(
        name="x",
        id="1",
        version="1.2.3",
        metadata={"k": "v"},
        endpoints=[EndpointInfo(name="e", subject="mesh.x.e", queue_group="x")],
    )
    out = json.loads(dump(info))
    assert out["type"] == INFO_TYPE
    assert out["endpoints"][0]["metadata"] == {}
    assert Info.model_validate(out) == info


# -- rfc3339 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC),
        datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(2024, 6, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 6, 1, 2, 0, 0),  # naive: local time
    ],
)
def test_rfc3339_is_utc_with_z(moment: datetime) -> None:
    text = rfc3339(moment)
    assert text.endswith("Z")
    assert "+" not in text
    assert datetime.fromisoformat(text) == moment.astimezone(UTC)


def test_rfc3339_converts_offsets_to_utc() -> None:
    moment = datetime(2024, 6, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert rfc3339(moment) == "2024-05-31T20:30:00Z"
