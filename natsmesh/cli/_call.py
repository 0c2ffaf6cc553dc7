"""The arguments of ``natsmesh call``: the target, the JSON payload and the headers.

Each is checked before anything connects; a bad one is a :class:`UsageError`
(exit 2) that says where the problem is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import pydantic_core

from natsmesh.cli._exit import UsageError
from natsmesh.wire._codec import Codec, DecodeError, decode
from natsmesh.wire._errors import ErrorKind
from natsmesh.wire._headers import check_user_headers
from natsmesh.wire._subjects import parse_target, validate_token

__all__ = ["MAX_JSON_ARG", "call_target", "parse_headers", "parse_payload"]

MAX_JSON_ARG: Final = 1024 * 1024


def call_target(text: str) -> str:
    """An argparse type: ``SERVICE.ENDPOINT`` whose names can be subject tokens."""
    try:
        _, endpoint = parse_target(text)
        validate_token("endpoint", endpoint)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_payload(text: str | None) -> Any:
    """The payload argument as JSON values (None without one; ``-``: read from stdin)."""
    if text is None:
        return None
    # "-": from standard input, as curl's "-d @-" (and what a shell cannot quote).
    data = sys.stdin.buffer.read(MAX_JSON_ARG + 1) if text == "-" else text.encode()
    if len(data) > MAX_JSON_ARG:
        raise UsageError(f"the JSON payload is larger than {MAX_JSON_ARG // 1024} KiB")
    try:
        return decode(data, Codec.JSON)
    except DecodeError as exc:
        if exc.kind is not ErrorKind.MALFORMED:  # a limit (depth, length): its own words
            raise UsageError(f"the JSON payload: {exc.reason}") from None
        raise UsageError(f"the JSON payload is not valid: {_where(data) or exc.reason}") from None


def _where(data: bytes) -> str:
    # The codec's reason is for a service's callers; the parser's own message has the
    # line and column (1-based), which is what someone fixing their shell quoting needs.
    try:
        pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        return str(exc)
    return ""


def parse_headers(items: list[str]) -> dict[str, str]:
    """``-H`` values, as ``KEY=VALUE`` or ``KEY: VALUE`` (the curl and nats CLI form)."""
    headers: dict[str, str] = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
        if cut <= 0:
            raise UsageError(f"header {item!r}: expected 'KEY: VALUE' or KEY=VALUE")
        name, value = item[:cut], item[cut + 1 :]
        # curl and nats strip the blanks after "KEY:"; after "KEY=" they are the value's.
        headers[name] = value.strip() if item[cut] == ":" else value
    try:
        return check_user_headers(headers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
