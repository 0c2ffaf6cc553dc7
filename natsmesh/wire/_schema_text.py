"""A JSON Schema as one short line, for people: ``{id: integer >= 1, name?: string}``.

``natsmesh info`` shows each endpoint's request and response this way (``--json``
has the schemas whole). Schemas come from the network, from any service: the
text is bounded in depth and length, ``$ref`` cycles end at the depth bound,
and anything that is not printable is replaced.
"""

from __future__ import annotations

import json
from typing import Any, Final

import pydantic_core

__all__ = ["printable", "schema_text"]

MAX_DEPTH: Final = 8  # levels of schema nodes ($ref, items and properties count one each)
MAX_TEXT: Final = 400
MAX_ITEMS: Final = 24  # properties, enum values or alternatives shown per node
MAX_RAW: Final = 256 * 1024


def schema_text(raw: str | None) -> str:
    """The schema in ``raw`` (JSON text) as one line; a note when there is none or it is bad."""
    if not raw:
        return "(no schema published)"
    if len(raw) > MAX_RAW:
        return "(schema too large to show; see --json)"
    try:
        schema = pydantic_core.from_json(raw)
    except ValueError:
        return "(not valid JSON)"
    defs = schema.get("$defs") if isinstance(schema, dict) else None
    text = printable(_Render(defs if isinstance(defs, dict) else {}).node(schema, 0))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on (escapes, newlines) made ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


class _Render:
    def __init__(self, defs: dict[str, Any]) -> None:
        self._defs = defs

    def node(self, node: Any, depth: int) -> str:
        if node is True or node == {}:
            return "any"
        if not isinstance(node, dict):
            return "nothing" if node is False else "?"
        if depth > MAX_DEPTH:
            return "…"
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = self._defs.get(ref.removeprefix("#/$defs/"))
            return self.node(target, depth + 1) if target is not None else ref
        if "const" in node:
            return _value(node["const"])
        enum = node.get("enum")
        if isinstance(enum, list):
            return " | ".join(_value(v) for v in enum[:MAX_ITEMS]) or "nothing"
        for key in ("anyOf", "oneOf", "allOf"):
            options = node.get(key)
            if isinstance(options, list) and options:
                glue = " & " if key == "allOf" else " | "
                return glue.join(self.node(o, depth + 1) for o in options[:MAX_ITEMS])
        kind = node.get("type")
        if isinstance(kind, list):
            return " | ".join(self._typed(node, str(k), depth) for k in kind[:MAX_ITEMS])
        return self._typed(node, kind, depth) if isinstance(kind, str) else "any"

    def _typed(self, node: dict[str, Any], kind: str, depth: int) -> str:
        if kind == "object":
            return self._object(node, depth)
        if kind == "array":
            items = node.get("items")
            return f"[{self.node(items, depth + 1)}]" if items is not None else "[any]"
        if kind in ("integer", "number"):
            return kind + _range(node.get("minimum"), node.get("maximum"), "")
        if kind == "string":
            fmt = node.get("format")
            suffix = f" ({fmt})" if isinstance(fmt, str) else ""
            return (
                "string" + _range(node.get("minLength"), node.get("maxLength"), " chars") + suffix
            )
        return kind

    def _object(self, node: dict[str, Any], depth: int) -> str:
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        if not isinstance(properties, dict) or not properties:
            if isinstance(extra, dict):
                return f"{{string: {self.node(extra, depth + 1)}}}"
            return "object"
        required = node.get("required")
        needed = set(required) if isinstance(required, list) else set()
        fields = []
        for name, sub in list(properties.items())[:MAX_ITEMS]:
            mark = "" if name in needed else "?"
            default = ""
            if isinstance(sub, dict) and "default" in sub:
                default = f" = {_value(sub['default'])}"
            fields.append(f"{name}{mark}: {self.node(sub, depth + 1)}{default}")
        if len(properties) > MAX_ITEMS:
            fields.append("…")
        return "{" + ", ".join(fields) + "}"


def _range(low: Any, high: Any, unit: str) -> str:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if number(low) and number(high):
        return f" {low}..{high}{unit}"
    if number(low):
        return f" >= {low}{unit}"
    if number(high):
        return f" <= {high}{unit}"
    return ""


def _value(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"
