"""Tests of natsmesh _subjects: which names may become subject tokens, and the subjects built."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsmesh.wire._errors import InvalidName
from natsmesh.wire._subjects import (
    MAX_NAME_LEN,
    Subjects,
    default_subset,
    parse_target,
    srv_request_subject,
    srv_subjects,
    validate_name,
    validate_prefix,
    validate_token,
)


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "orders", "order-service", "order_service", "v2", "a1-b2_c3", "a" * MAX_NAME_LEN],
)
def test_validate_name_accepts(name: str) -> None:
    assert validate_name("service", name) == name


@pytest.mark.parametrize(
    "name",
    [
        ".",
        "*",
        ">",
        " ",
        "\t",
        "\r\n",
        "\0",
        "",
        "a" * (MAX_NAME_LEN + 1),
        "1abc",
        "-a",
        "_a",
        "é",
        "naïve",
        "東京",
        "Ωmega",
        "a.b",
        "a*",
        "a>",
        "a b",
        "a\n",
        "a\r\n",
        "a\0",
        "a\u00a0",
        "a$b",
        "a/b",
        "\uff11",  # FULLWIDTH DIGIT ONE
    ],
)
def test_validate_name_rejects(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name("endpoint", name)
    assert info.value.kind == "endpoint"
    assert info.value.value == name


@pytest.mark.parametrize("value", [None, 1, b"abc", ["a"]])
def test_validate_name_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidName):
        validate_name("service", value)


def test_invalid_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid service name"):
        validate_name("service", "a.b")


# Mostly hostile: valid-looking names with forbidden characters mixed in.
_names = st.one_of(
    st.text(max_size=MAX_NAME_LEN + 2),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,70}", fullmatch=True),
    st.text(
        st.sampled_from("aZ09_-.*> \t\r\n\0\u00a0\u2028éΩ$"),
        min_size=1,
        max_size=MAX_NAME_LEN + 2,
    ),
)


@given(name=_names)
def test_accepted_names_are_single_literal_tokens(name: str) -> None:
    try:
        validate_name("service", name)
    except InvalidName:
        return
    assert not any(c in name for c in ".*>")
    assert not any(c.isspace() for c in name)
    assert name.isascii()
    assert name.isprintable()
    s = Subjects()
    assert len(s.endpoint(name, name).split(".")) == 3
    assert len(s.subset(name, name, name).split(".")) == 4
    assert len(s.instance(name, name, name).split(".")) == 5
    assert len(srv_subjects("INFO", name, name)[2].split(".")) == 4


# -- Subjects ----------------------------------------------------------------------


def test_subjects_default_prefix() -> None:
    s = Subjects()
    assert s.endpoint("orders", "create") == "mesh.orders.create"
    assert s.subset("orders", "v2", "create") == "mesh.orders.v2.create"
    assert s.instance("orders", "ABC123", "create") == "mesh._i.orders.ABC123.create"


def test_subjects_custom_prefix() -> None:
    s = Subjects("acme.prod")
    assert s.endpoint("orders", "create") == "acme.prod.orders.create"
    assert s.subset("orders", "v1", "get") == "acme.prod.orders.v1.get"
    assert s.instance("orders", "x", "get") == "acme.prod._i.orders.x.get"


def test_queue_groups() -> None:
    assert Subjects.queue_group("orders") == "orders"
    assert Subjects.queue_group("orders", "v2") == "orders.v2"


@pytest.mark.parametrize("prefix", ["mesh", "a.b", "acme-prod.mesh_1", "x" * 128])
def test_validate_prefix_accepts(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix
    assert Subjects(prefix).prefix == prefix


@pytest.mark.parametrize(
    "prefix",
    ["", ".", "a.", ".a", "a..b", "a.*", ">", "a b", "1mesh", "_i", "mesh.>", "x" * 129, "$SRV"],
)
def test_validate_prefix_rejects(prefix: str) -> None:
    with pytest.raises(InvalidName):
        validate_prefix(prefix)
    with pytest.raises(InvalidName):
        Subjects(prefix)


# -- parse_target -------------------------------------------------------------------


def test_parse_target() -> None:
    assert parse_target("orders.create") == ("orders", "create")
    # The endpoint part is returned as given; Mesh validates or discovers it.
    assert parse_target("orders.a.b") == ("orders", "a.b")


@pytest.mark.parametrize(
    "target", ["", "orders", "orders.", ".create", "*.create", ">.x", "a b.c", "1a.b"]
)
def test_parse_target_rejects(target: str) -> None:
    with pytest.raises(InvalidName):
        parse_target(target)


# -- default_subset ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "subset"),
    [
        ("2.1.0", "v2"),
        ("0.1.0", "v0"),
        ("10.0.0-rc.1", "v10"),
        ("1.0.0+build.5", "v1"),
        ("v3.0.0", "v3"),
        ("garbage", "v0"),
        ("", "v0"),
    ],
)
def test_default_subset(version: str, subset: str) -> None:
    assert default_subset(version) == subset


# -- $SRV --------------------------------------------------------------------------


def test_srv_subjects() -> None:
    assert srv_subjects("PING", "orders", "ID1") == (
        "$SRV.PING",
        "$SRV.PING.orders",
        "$SRV.PING.orders.ID1",
    )


def test_srv_request_subject() -> None:
    assert srv_request_subject("INFO") == "$SRV.INFO"
    assert srv_request_subject("INFO", "orders") == "$SRV.INFO.orders"
    assert srv_request_subject("STATS", "orders", "ID1") == "$SRV.STATS.orders.ID1"
    # ADR-32 names may start with a digit; they are still single tokens.
    assert srv_request_subject("PING", "1svc") == "$SRV.PING.1svc"


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "", "x" * 65, "a\r\n"])
def test_srv_request_subject_rejects_bad_names_and_ids(bad: str) -> None:
    with pytest.raises(InvalidName):
        srv_request_subject("INFO", bad)
    with pytest.raises(InvalidName):
        srv_request_subject("INFO", "orders", bad)


@pytest.mark.parametrize(("value", "ok"), [("abc", True), ("1-2_3", True), ("a.b", False)])
def test_validate_token(value: str, ok: bool) -> None:
    if ok:
        assert validate_token("id", value) == value
    else:
        with pytest.raises(InvalidName):
            validate_token("id", value)
