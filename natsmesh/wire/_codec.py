"""Payload bytes to Python values and back: msgpack by default, JSON on request.

Decoding is bounded, because a payload is hostile until proven otherwise: 1 MiB
of msgpack ``0x80`` bytes would otherwise become a million dicts. Limits apply to
the size of the payload, the length of every string, array and map, the nesting
depth, and (for payloads large enough to matter) the total number of containers.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import pydantic_core

from natsmesh.wire._errors import ErrorKind

CONTENT_TYPE: Final = "Content-Type"
MSGPACK_TYPE: Final = "application/msgpack"
JSON_TYPE: Final = "application/json"
_MSGPACK_ALIASES: Final = frozenset(
    {MSGPACK_TYPE, "application/x-msgpack", "application/vnd.msgpack"}
)

_EXCEEDS = re.compile(r"exceeds max_(str|bin|array|map)_len\((\d+)\)")
_LENGTH_LIMITS: Final = {
    "str": "a string is longer than the limit of {limit} characters",
    "bin": "binary data is longer than the limit of {limit} bytes",
    "array": "an array has more items than the limit of {limit}",
    "map": "a map has more entries than the limit of {limit}",
}

# Below this many bytes a payload cannot hold enough containers to hurt, so the
# per-container counting hooks (a Python call per map or array) are skipped.
_COUNT_FROM_BYTES: Final = 16 * 1024


class Codec(enum.Enum):
    MSGPACK = MSGPACK_TYPE
    JSON = JSON_TYPE


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a decoded payload may hold."""

    max_payload: int = 1024 * 1024
    max_length: int = 100_000  # elements of one array or map, characters of one string
    max_containers: int = 100_000  # arrays and maps in one payload
    max_depth: int = 64


DEFAULT_LIMITS: Final = Limits()


class DecodeError(Exception):
    """A payload that cannot be accepted; ``kind`` says which error reply it earns."""

    def __init__(self, kind: ErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def codec_for(content_type: str | None) -> Codec:
    """The codec for a ``Content-Type`` header value; no header means msgpack."""
    if not content_type:
        return Codec.MSGPACK
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON_TYPE or media.endswith("+json"):
        return Codec.JSON
    if media in _MSGPACK_ALIASES:
        return Codec.MSGPACK
    raise DecodeError(
        ErrorKind.UNSUPPORTED_MEDIA_TYPE,
        "unsupported Content-Type; use application/msgpack or application/json",
    )


class _Counter:
    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = limit

    def __call__(self, value: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise DecodeError(
                ErrorKind.TOO_LARGE, f"payload holds more than {self.limit} arrays and maps"
            )
        return value


def decode(data: bytes, codec: Codec, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode a payload into plain Python values (dict, list, str, int, float, bool, None).

    An empty payload decodes to None. Raises DecodeError.
    """
    if len(data) > limits.max_payload:
        raise DecodeError(ErrorKind.TOO_LARGE, f"payload larger than {limits.max_payload} bytes")
    if not data:
        return None
    if codec is Codec.JSON:
        value = _decode_json(data, limits)
        # The JSON parser knows no length or count limits: check them on the result.
        _check_json(value, limits)
    else:
        value = _decode_msgpack(data, limits)
        # Nesting needs at least one byte per level, so short payloads skip the walk.
        if len(data) >= limits.max_depth:
            _check_depth(value, limits.max_depth)
    return value


@functools.cache
def _unpacker(limits: Limits) -> Callable[..., Any]:
    # Bound once per Limits: building the keyword arguments is a good part of the
    # cost of decoding a small payload.
    n = limits.max_length
    return functools.partial(
        msgpack.unpackb,
        raw=False,
        strict_map_key=True,
        max_str_len=n,
        max_bin_len=limits.max_payload,
        max_array_len=n,
        max_map_len=n,
        max_ext_len=0,
        ext_hook=_reject_ext,
    )


def _decode_msgpack(data: bytes, limits: Limits) -> Any:
    # The default limits skip even the cache's lookup: hashing Limits costs as much.
    unpack = _DEFAULT_UNPACKER if limits is DEFAULT_LIMITS else _unpacker(limits)
    try:
        if len(data) < _COUNT_FROM_BYTES:
            return unpack(data)
        counter = _Counter(limits.max_containers)
        return unpack(data, object_hook=counter, list_hook=counter)
    except DecodeError:
        raise
    except msgpack.StackError:
        raise DecodeError(ErrorKind.TOO_LARGE, _too_deep(limits)) from None
    except ValueError as exc:
        # msgpack reports its length limits as ValueError("20 exceeds max_str_len(10)").
        exceeded = _EXCEEDS.search(str(exc))
        if exceeded is not None:
            what, limit = _LENGTH_LIMITS[exceeded[1]], exceeded[2]
            raise DecodeError(ErrorKind.TOO_LARGE, what.format(limit=limit)) from None
        raise DecodeError(ErrorKind.MALFORMED, "payload is not valid msgpack") from None
    except Exception:
        # ExtraData, FormatError, UnicodeDecodeError, TypeError (unhashable map key), ...
        raise DecodeError(ErrorKind.MALFORMED, "payload is not valid msgpack") from None


def _decode_json(data: bytes, limits: Limits) -> Any:
    try:
        # pydantic-core's parser is fast, bounds recursion and rejects huge integers.
        return pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        if "recursion" in str(exc).lower():
            raise DecodeError(ErrorKind.TOO_LARGE, _too_deep(limits)) from None
        raise DecodeError(ErrorKind.MALFORMED, "payload is not valid JSON") from None


def _too_deep(limits: Limits) -> str:
    # The parsers' own recursion limits are deeper than max_depth: past them, so is it.
    return f"payload nested deeper than {limits.max_depth} levels"


def _check_depth(value: Any, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            raise DecodeError(ErrorKind.TOO_LARGE, f"payload nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def _check_json(value: Any, limits: Limits) -> None:
    containers = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if len(item) > limits.max_length:
                raise DecodeError(
                    ErrorKind.TOO_LARGE,
                    f"a string is longer than the limit of {limits.max_length} characters",
                )
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise DecodeError(ErrorKind.MALFORMED, "a number is out of range")
            continue
        if not isinstance(item, dict | list):
            continue
        containers += 1
        if depth > limits.max_depth:
            raise DecodeError(ErrorKind.TOO_LARGE, _too_deep(limits))
        if containers > limits.max_containers:
            raise DecodeError(
                ErrorKind.TOO_LARGE,
                f"payload holds more than {limits.max_containers} arrays and objects",
            )
        if len(item) > limits.max_length:
            raise DecodeError(
                ErrorKind.TOO_LARGE,
                f"an array or object has more items than the limit of {limits.max_length}",
            )
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        else:
            stack.extend((v, depth + 1) for v in item)


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(ErrorKind.MALFORMED, "msgpack extension types are not accepted")


_DEFAULT_UNPACKER: Final = _unpacker(DEFAULT_LIMITS)
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode(value: Any, codec: Codec) -> bytes:
    """Encode plain Python values; None becomes an empty payload."""
    if value is None:
        return b""
    if codec is Codec.JSON:
        # NaN and Infinity are not JSON; null is what JavaScript's JSON.stringify writes.
        return pydantic_core.to_json(value, inf_nan_mode="null")
    return _packer.pack(value)
