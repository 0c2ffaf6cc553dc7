"""Endpoint JSON schemas, as services publish them in ``$SRV.INFO`` (pure, no I/O).

A natsmesh endpoint's metadata carries ``natsmesh.request_schema`` and
``natsmesh.response_schema`` (JSON strings, pydantic's JSON Schema with local
``$defs``). This module reads them defensively (a service in another language
may send anything), finds the top-level properties of a request (for path and
query parameters), turns parameter strings into the types the schema asks for,
and moves ``$defs`` into an OpenAPI document's ``components/schemas``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

REQUEST_KEY: Final = "natsmesh.request_schema"
RESPONSE_KEY: Final = "natsmesh.response_schema"
MAX_SCHEMA: Final = 256 * 1024

_INT: Final = re.compile(r"-?[0-9]{1,18}")
_COMPONENT: Final = re.compile(r"[^A-Za-z0-9._-]")

Schema = dict[str, Any]


def read_schema(metadata: Mapping[str, str], key: str) -> Schema | None:
    """The schema under ``key`` in endpoint metadata; None when absent or unreadable."""
    text = metadata.get(key)
    if not text or len(text) > MAX_SCHEMA:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _resolve(schema: Schema, root: Schema) -> Schema:
    """Follow a local ``#/$defs/Name`` reference (one hop, as pydantic writes them)."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        found = root.get("$defs", {}).get(ref[len("#/$defs/") :])
        if isinstance(found, dict):
            return found
    return schema


def object_schema(schema: Schema | None) -> Schema | None:
    """The object schema a request is, or may be (``Model | None``); None if it is not one."""
    if schema is None:
        return None
    top = _resolve(schema, schema)
    if isinstance(top.get("properties"), dict):
        return top
    for option in top.get("anyOf", ()):
        if isinstance(option, dict):
            found = _resolve(option, schema)
            if isinstance(found.get("properties"), dict):
                return found
    return None


def properties(schema: Schema | None) -> dict[str, Schema]:
    """The top-level properties of a request schema, references resolved one hop."""
    found = object_schema(schema)
    if found is None or schema is None:
        return {}
    return {
        name: _resolve(prop, schema)
        for name, prop in found["properties"].items()
        if isinstance(name, str) and isinstance(prop, dict)
    }


def required(schema: Schema | None) -> set[str]:
    found = object_schema(schema)
    names = found.get("required", ()) if found is not None else ()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def types_of(prop: Schema) -> list[str]:
    """The JSON types a schema allows, through ``anyOf``/``oneOf`` ([] when it does not say)."""
    kind = prop.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    options = prop.get("anyOf") or prop.get("oneOf")
    found: list[str] = []
    if isinstance(options, list):
        for option in options:
            if isinstance(option, dict):
                found += types_of(option)
    return found


def coerce(value: str, prop: Schema | None) -> Any:
    """A path or query parameter as the type its schema asks for; the string otherwise.

    Only unambiguous spellings convert (``"12"`` to 12, ``"true"`` to True); the
    service validates the result either way.
    """
    if prop is None:
        return value
    types = types_of(prop)
    if "string" in types:
        return value
    if "integer" in types and _INT.fullmatch(value):
        return int(value)
    if "number" in types:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number) and len(value) <= 64:
                return int(value) if _INT.fullmatch(value) else number
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    return value


def coerce_all(values: list[str], prop: Schema | None) -> Any:
    """A parameter given once or repeated (``?tag=a&tag=b``), as its schema asks."""
    if prop is not None and "array" in types_of(prop):
        items = prop.get("items")
        return [coerce(v, items if isinstance(items, dict) else None) for v in values]
    return coerce(values[-1], prop)


def component_name(name: str) -> str:
    """A name OpenAPI accepts as a component key (``^[a-zA-Z0-9._-]+$``)."""
    return _COMPONENT.sub("_", name)[:128] or "_"


def relocate(schema: Schema, names: Mapping[str, str]) -> Any:
    """``schema`` with ``#/$defs/X`` references pointing at ``#/components/schemas/<names[X]>``."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target = names.get(ref[len("#/$defs/") :]) if ref.startswith("#/$defs/") else None
                # A reference that leads nowhere known becomes "any value", never a
                # pointer into the wrong part of the document.
                return {"$ref": f"#/components/schemas/{target}"} if target else {}
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
