"""Endpoint schemas read from ``$SRV.INFO``, parameter typing, ``$defs`` moved; request limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import GatewayLimits
from gateway._schemas import (
    coerce,
    coerce_all,
    component_name,
    properties,
    read_schema,
    relocate,
    required,
)

OPTIONAL_MODEL = {
    "$defs": {
        "Filter": {
            "type": "object",
            "properties": {
                "max": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "kind": {"$ref": "#/$defs/Kind"},
            },
            "required": ["max"],
        },
        "Kind": {"enum": ["a", "b"], "type": "string"},
    },
    "anyOf": [{"$ref": "#/$defs/Filter"}, {"type": "null"}],
}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, None),
        ({"natsmesh.request_schema": ""}, None),
        ({"natsmesh.request_schema": "{not json"}, None),
        ({"natsmesh.request_schema": "[1]"}, None),
        ({"natsmesh.request_schema": "[" * 100_000}, None),
        ({"natsmesh.request_schema": '{"type": "object"}'}, {"type": "object"}),
        ({"natsmesh.request_schema": json.dumps({"x": "y" * 300_000})}, None),
    ],
)
def test_schemas_are_read_defensively(metadata: dict[str, str], expected: Any) -> None:
    assert read_schema(metadata, "natsmesh.request_schema") == expected


def test_properties_through_references_and_optional_models() -> None:
    props = properties(OPTIONAL_MODEL)
    assert set(props) == {"max", "tags", "kind"}
    assert props["kind"] == {"enum": ["a", "b"], "type": "string"}
    assert required(OPTIONAL_MODEL) == {"max"}
    assert properties({"type": "string"}) == {}
    assert properties(None) == {}


@pytest.mark.parametrize(
    ("value", "prop", "expected"),
    [
        ("12", {"type": "integer"}, 12),
        ("-3", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, -3),
        ("1.5", {"type": "integer"}, "1.5"),  # not an integer: the service says so
        ("1" * 30, {"type": "integer"}, "1" * 30),
        ("1.5", {"type": "number"}, 1.5),
        ("2", {"type": "number"}, 2),
        ("nan", {"type": "number"}, "nan"),
        ("1e999", {"type": "number"}, "1e999"),
        ("true", {"type": "boolean"}, True),
        ("false", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, "yes"),
        ("12", {"type": "string"}, "12"),
        ("12", {"type": ["string", "integer"]}, "12"),
        ("", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, ""),
        ("12", None, "12"),
        ("12", {}, "12"),
    ],
)
def test_parameters_take_the_type_the_schema_asks_for(
    value: str, prop: dict[str, Any] | None, expected: Any
) -> None:
    assert coerce(value, prop) == expected
    assert type(coerce(value, prop)) is type(expected)


def test_repeated_parameters_become_arrays_only_where_the_schema_says() -> None:
    array = {"type": "array", "items": {"type": "integer"}}
    assert coerce_all(["1", "2"], array) == [1, 2]
    assert coerce_all(["1", "2"], {"type": "integer"}) == 2


def test_defs_move_to_components() -> None:
    moved = relocate(OPTIONAL_MODEL, {"Filter": "svc.Filter"})
    assert moved == {"anyOf": [{"$ref": "#/components/schemas/svc.Filter"}, {"type": "null"}]}
    # a reference that leads nowhere known is "any value", never a pointer elsewhere
    assert relocate({"$ref": "#/$defs/Kind"}, {}) == {}
    assert relocate({"$ref": "http://example.com/x"}, {}) == {}
    assert component_name("a b/<c>") == "a_b__c_"


def test_limits_are_checked_and_the_body_fits_a_nats_message() -> None:
    for bad in (
        {"max_body": 0},
        {"max_headers": 0},
        {"max_concurrency": 0},
        {"read_timeout": 0},
        {"max_query_params": -1},
    ):
        with pytest.raises(ValueError, match="must"):
            GatewayLimits(**bad)
    limits = GatewayLimits(max_body=10 * 1024 * 1024)
    assert limits.body_limit(None) == limits.max_body
    fits = limits.body_limit(1024 * 1024)
    assert fits * 2.25 + 4096 <= 1024 * 1024
    assert GatewayLimits().body_limit(1024 * 1024) == 256 * 1024
    assert GatewayLimits().body_limit(1000) == 1
