"""``natsmesh info``'s one-line schemas: readable for real models, bounded for hostile ones."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from examples.shop.models import OrderRequest, ProductFilter, ProductList
from natsmesh.wire._schema_text import MAX_RAW, MAX_TEXT, printable, schema_text


class Node(pydantic.BaseModel):
    name: str
    children: list[Node] = []


def text_of(kind: Any) -> str:
    # As services publish them (natsmesh.services._spec): keys sorted.
    return schema_text(json.dumps(pydantic.TypeAdapter(kind).json_schema(), sort_keys=True))


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (OrderRequest, "{customer: string 1..64 chars, product_id: integer >= 1,"
         " quantity: integer 1..100}"),
        (ProductFilter | None, "{in_stock?: boolean = false,"
         " max_price_cents?: integer >= 0 | null = null} | null"),
        (ProductList, "{products: [{id: integer >= 1, name: string,"
         " price_cents: integer >= 0, stock: integer >= 0}]}"),
        (dict[str, int], "{string: integer}"),
        (list[str], "[string]"),
        (str, "string"),
        (None, "null"),
        (bytes, "string (binary)"),
    ],
)  # fmt: skip
def test_models_read_as_their_fields(kind: Any, text: str) -> None:
    assert text_of(kind) == text


def test_a_recursive_model_ends_at_the_depth_bound() -> None:
    text = text_of(Node)
    assert text.startswith("{children?: [{children?: [{children?: [")
    assert "…" in text


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (None, "(no schema published)"),
        ("", "(no schema published)"),
        ("{not json", "(not valid JSON)"),
        ("[" * 100_000, "(not valid JSON)"),
        ("[" * 5_000 + "]" * 5_000, "(not valid JSON)"),
        (" " * (MAX_RAW + 1), "(schema too large to show; see --json)"),
        ('"a string"', "?"),
        ("true", "any"),
        ("false", "nothing"),
        ('{"$ref": "#/$defs/Missing"}', "#/$defs/Missing"),
        ('{"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}', "…"),
        ('{"type": "object", "properties": {"a\\u001b[31mred": {"type": "string"}}}',
         "{a?[31mred?: string}"),
        ('{"type": ["string", 7, null]}', "string | 7 | None"),
        ('{"enum": []}', "nothing"),
        ('{"type": "integer", "minimum": "1"}', "integer"),
    ],
)  # fmt: skip
def test_hostile_schemas_give_a_bounded_line(raw: str | None, text: str) -> None:
    assert schema_text(raw) == text


def test_a_huge_schema_is_cut_short() -> None:
    properties = {f"field_{i}": {"type": "string"} for i in range(1000)}
    text = schema_text(json.dumps({"type": "object", "properties": properties}))
    assert len(text) <= MAX_TEXT
    assert text.endswith("…")


def test_printable_replaces_what_a_terminal_would_act_on() -> None:
    assert printable("ok\x1b]0;title\x07\r\n\tend") == "ok?]0;title????end"
