"""Tests of natsmesh.wire._codec: round trips, the Content-Type table, and hostile payloads."""

from __future__ import annotations

import contextlib
import json
import math
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh.wire._codec import (
    DEFAULT_LIMITS,
    Codec,
    DecodeError,
    Limits,
    codec_for,
    decode,
    encode,
)
from natsmesh.wire._errors import ErrorKind

MIB = 1024 * 1024

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=8)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=10), children, max_size=8)
    ),
    max_leaves=30,
)


def decode_error(data: bytes, codec: Codec, limits: Limits = DEFAULT_LIMITS) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, codec, limits)
    return info.value


def array16(items: list[bytes]) -> bytes:
    return b"\xdc" + struct.pack(">H", len(items)) + b"".join(items)


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(Codec))
@given(value=json_values)
def test_json_able_values_survive_a_round_trip(codec: Codec, value: Any) -> None:
    assert decode(encode(value, codec), codec) == value


@pytest.mark.parametrize("codec", list(Codec))
def test_none_is_an_empty_payload(codec: Codec) -> None:
    assert encode(None, codec) == b""
    assert decode(b"", codec) is None


def test_msgpack_bin_decodes_to_bytes() -> None:
    assert decode(msgpack.packb(b"\x00\xff"), Codec.MSGPACK) == b"\x00\xff"


# -- codec_for ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "codec"),
    [
        (None, Codec.MSGPACK),
        ("", Codec.MSGPACK),
        ("application/json", Codec.JSON),
        ("application/json; charset=utf-8", Codec.JSON),
        ("APPLICATION/JSON", Codec.JSON),
        ("  application/json  ", Codec.JSON),
        ("application/problem+json", Codec.JSON),
        ("application/msgpack", Codec.MSGPACK),
        ("application/x-msgpack", Codec.MSGPACK),
        ("application/vnd.msgpack", Codec.MSGPACK),
    ],
)
def test_codec_for_known_media_types(content_type: str | None, codec: Codec) -> None:
    assert codec_for(content_type) is codec


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/jsonx", "application/xml", "json", "application/octet-stream"],
)
def test_codec_for_rejects_other_media_types(content_type: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec_for(content_type)
    assert info.value.kind is ErrorKind.UNSUPPORTED_MEDIA_TYPE


# -- hostile msgpack -----------------------------------------------------------------


@pytest.mark.timeout(5)
def test_a_mebibyte_of_empty_maps_is_rejected_without_building_them() -> None:
    data = b"\x80" * MIB
    tracemalloc.start()
    try:
        error = decode_error(data, Codec.MSGPACK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.kind in {ErrorKind.MALFORMED, ErrorKind.TOO_LARGE}
    # Unbounded, this is about a million dicts (tens of MiB); the input itself is 1 MiB.
    assert peak < 4 * MIB


@pytest.mark.timeout(5)
def test_an_array_header_claiming_a_million_elements_is_refused_before_allocating() -> None:
    data = b"\xdd" + struct.pack(">I", 1_000_000) + b"\x80" * 1000
    tracemalloc.start()
    try:
        error = decode_error(data, Codec.MSGPACK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.kind is ErrorKind.TOO_LARGE
    assert peak < MIB  # a list of a million slots alone would be 8 MB


@pytest.mark.parametrize("empty", [b"\x90", b"\x80"], ids=["arrays", "maps"])
def test_many_small_containers_hit_the_container_counter(empty: bytes) -> None:
    # 1 + 1,000 + 200,000 containers in about 200 kB, each array within max_length.
    data = array16([array16([empty] * 200)] * 1000)
    assert len(data) < MIB
    error = decode_error(data, Codec.MSGPACK)
    assert error.kind is ErrorKind.TOO_LARGE
    # The same payload passes with room for its containers: it was the counter.
    roomy = Limits(max_containers=250_000)
    assert len(decode(data, Codec.MSGPACK, roomy)) == 1000


def test_nesting_at_max_depth_is_accepted() -> None:
    depth = DEFAULT_LIMITS.max_depth
    assert decode(b"\x91" * (depth - 1) + b"\x90", Codec.MSGPACK) is not None
    assert decode(b"[" * depth + b"]" * depth, Codec.JSON) is not None


@pytest.mark.parametrize("extra", [1, 10, 1000, MIB - 100])
def test_msgpack_nested_deeper_than_max_depth_is_too_large(extra: int) -> None:
    levels = DEFAULT_LIMITS.max_depth + extra
    error = decode_error(b"\x91" * (levels - 1) + b"\x90", Codec.MSGPACK)
    assert error.kind is ErrorKind.TOO_LARGE


def test_msgpack_nested_maps_deeper_than_max_depth_are_too_large() -> None:
    levels = DEFAULT_LIMITS.max_depth + 1
    data = b"\x81\xa1k" * (levels - 1) + b"\x80"
    assert decode_error(data, Codec.MSGPACK).kind is ErrorKind.TOO_LARGE


def test_a_depth_limit_of_our_own_is_honoured() -> None:
    limits = Limits(max_depth=3)
    assert decode(b"\x92\x91\x90\x01", Codec.MSGPACK, limits) == [[[]], 1]
    assert decode_error(b"\x91\x91\x91\x90", Codec.MSGPACK, limits).kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("truncated map", msgpack.packb({"a": [1, 2, 3]})[:-1]),
        ("truncated str", b"\xa5abc"),
        ("never-used byte", b"\xc1"),
        ("extra data", msgpack.packb(1) + msgpack.packb(2)),
        ("invalid utf-8 str", b"\xa2\xff\xfe"),
        ("list map key", b"\x81\x91\x01\x01"),
        ("map map key", b"\x81\x80\x01"),
        ("int map key", b"\x81\x01\x01"),
    ],
)
def test_malformed_msgpack(name: str, data: bytes) -> None:
    assert decode_error(data, Codec.MSGPACK).kind is ErrorKind.MALFORMED


@pytest.mark.parametrize("codec", list(Codec))
def test_a_payload_over_max_payload_is_too_large(codec: Codec) -> None:
    small = Limits(max_payload=8)
    assert decode(b'"1234"', Codec.JSON, small) == "1234"
    assert decode_error(b'"123456789"', codec, small).kind is ErrorKind.TOO_LARGE
    assert decode_error(b"\x90" * (MIB + 1), codec).kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        b"\xd4\x05\x00",  # fixext 1
        b"\xc7\x03\x05abc",  # ext 8
        b"\xc7\x00\x05",  # ext 8 of length zero: max_ext_len=0 alone lets it through
        b"\x91\xc7\x00\x05",  # the same inside an array
        msgpack.packb(msgpack.Timestamp(1, 0)),  # the timestamp extension, type -1
        b"\x91\xd5\x05\x00\x00",  # fixext 2 inside an array
    ],
)
def test_ext_types_are_rejected(data: bytes) -> None:
    decode_error(data, Codec.MSGPACK)


def test_msgpack_length_limits() -> None:
    limits = Limits(max_length=3)
    assert decode(b"\x93\x01\x02\x03", Codec.MSGPACK, limits) == [1, 2, 3]
    for data in (b"\x94\x01\x02\x03\x04", b"\xa4abcd", b"\x84" + b"\xa1a\x01" * 4):
        assert decode_error(data, Codec.MSGPACK, limits).kind is ErrorKind.TOO_LARGE


# -- hostile JSON ---------------------------------------------------------------------


def test_json_nested_deeper_than_max_depth_is_too_large() -> None:
    levels = DEFAULT_LIMITS.max_depth + 1
    assert decode_error(b"[" * levels + b"]" * levels, Codec.JSON).kind is ErrorKind.TOO_LARGE
    objects = b'{"a":' * levels + b"{}" + b"}" * levels
    assert decode_error(objects, Codec.JSON).kind is ErrorKind.TOO_LARGE


@pytest.mark.parametrize(
    "data", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000]
)
def test_json_bracket_bombs_are_refused_without_recursion_error(data: bytes) -> None:
    error = decode_error(data, Codec.JSON)  # a RecursionError would fail pytest.raises
    assert error.kind in {ErrorKind.TOO_LARGE, ErrorKind.MALFORMED}


@pytest.mark.parametrize("data", [b"1" * 5000, b"[" + b"9" * 5000 + b"]", b"-" + b"7" * 5000])
def test_a_5000_digit_json_integer_is_malformed(data: bytes) -> None:
    assert decode_error(data, Codec.JSON).kind is ErrorKind.MALFORMED


@pytest.mark.parametrize(
    "data",
    [b"NaN", b"[NaN]", b"Infinity", b'{"x": -Infinity}', b"nan", b"inf"],
)
def test_json_nan_and_infinity_are_rejected(data: bytes) -> None:
    assert decode_error(data, Codec.JSON).kind is ErrorKind.MALFORMED


@pytest.mark.parametrize("data", [b"1e400", b"[-1e400]", b'{"x": 1e999}'])
def test_json_numbers_that_overflow_to_infinity_are_rejected(data: bytes) -> None:
    # allow_inf_nan=False refuses the NaN/Infinity tokens; these overflow to inf instead.
    decode_error(data, Codec.JSON)


@pytest.mark.parametrize(
    "data",
    [b"{", b"[1,]", b"{} x", b"'a'", b'"\\ud800"', b"\xff", b'{"a" 1}', b"tru"],
)
def test_malformed_json(data: bytes) -> None:
    assert decode_error(data, Codec.JSON).kind is ErrorKind.MALFORMED


@pytest.mark.parametrize(
    "data",
    [
        b"[" + b"0," * 100_000 + b"0]",  # an array longer than max_length
        b'"' + b"a" * 100_001 + b'"',  # a string longer than max_length
        b'{"' + b"k" * 100_001 + b'": 1}',  # a key longer than max_length
        b"[" + b"[[]]," * 100_000 + b"[]]",  # 200,001 containers, each array short
    ],
    ids=["long-array", "long-string", "long-key", "many-containers"],
)
def test_json_obeys_the_length_and_container_limits(data: bytes) -> None:
    assert len(data) < MIB
    assert decode_error(data, Codec.JSON).kind is ErrorKind.TOO_LARGE


def test_json_limits_of_our_own_are_honoured() -> None:
    limits = Limits(max_length=3, max_containers=3)
    assert decode(b'[[1, 2, 3], {"abc": "xyz"}]', Codec.JSON, limits) == [[1, 2, 3], {"abc": "xyz"}]
    for data in (b"[1, 2, 3, 4]", b'"abcd"', b'{"abcd": 1}', b"[[], [], []]"):
        assert decode_error(data, Codec.JSON, limits).kind is ErrorKind.TOO_LARGE


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


@pytest.mark.parametrize(
    ("value", "sent"),
    [(math.nan, None), (math.inf, None), ({"x": [-math.inf, 1.5]}, {"x": [None, 1.5]})],
)
def test_json_encode_writes_nan_and_infinity_as_null(value: Any, sent: Any) -> None:
    # NaN and Infinity are not JSON: null, as JavaScript's JSON.stringify writes (README).
    assert json.loads(encode(value, Codec.JSON), parse_constant=_reject_constant) == sent


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_msgpack_carries_nan_and_infinity_as_floats(value: float) -> None:
    back = decode(encode(value, Codec.MSGPACK), Codec.MSGPACK, Limits())
    assert back == value or (math.isnan(back) and math.isnan(value))


# -- properties ---------------------------------------------------------------------

_MSGPACK_HEADS = [bytes([b]) for b in (0x80, 0x81, 0x90, 0x91, 0xA1, 0xC4, 0xC7, 0xD4, 0xDC, 0xDE)]


@pytest.mark.parametrize("codec", list(Codec))
@given(data=st.binary(max_size=2048))
def test_decode_raises_only_decode_error_for_any_bytes(codec: Codec, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data, codec)


@given(
    data=st.lists(
        st.sampled_from(_MSGPACK_HEADS) | st.binary(min_size=1, max_size=3), max_size=200
    ).map(b"".join)
)
def test_decode_raises_only_decode_error_for_msgpack_like_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data, Codec.MSGPACK)


@given(
    data=st.lists(
        st.sampled_from([b"[", b"]", b"{", b"}", b'"a":', b",", b"1", b"-", b"e9", b'"', b"\\"]),
        max_size=300,
    ).map(b"".join)
)
def test_decode_raises_only_decode_error_for_json_like_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data, Codec.JSON)
