"""Every natsmesh failure as the gateway answers it: status, kind, JSON body, no input echoed."""

from __future__ import annotations

import json

import pytest

from gateway._errors import GatewayError, error_body, from_exception, overloaded
from natsmesh import (
    DeadlineExceeded,
    ErrorKind,
    InvalidName,
    InvalidReply,
    InvalidRequest,
    MessageTooLarge,
    NoResponders,
    Overloaded,
    RemoteError,
    UnknownEndpoint,
)

WHERE = {"service": "catalog", "endpoint": "get", "subject": "mesh.catalog.get"}


def remote(cls: type[RemoteError], code: int, kind: str, **extra: object) -> RemoteError:
    return cls("the message", code=code, kind=kind, **WHERE, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (NoResponders("x", **WHERE), 503, "no_responders"),
        (DeadlineExceeded("x", **WHERE), 504, "deadline"),
        (remote(Overloaded, 503, ErrorKind.OVERLOADED), 503, "overloaded"),
        (remote(UnknownEndpoint, 404, ErrorKind.UNKNOWN_ENDPOINT), 404, "unknown_endpoint"),
        (remote(InvalidRequest, 422, ErrorKind.VALIDATION), 422, "validation"),
        (remote(InvalidRequest, 400, ErrorKind.MALFORMED), 400, "malformed"),
        (remote(InvalidRequest, 413, ErrorKind.TOO_LARGE), 413, "too_large"),
        (remote(RemoteError, 409, ErrorKind.SERVICE), 409, "service"),
        (remote(RemoteError, 500, ErrorKind.INTERNAL), 500, "internal"),
        (remote(RemoteError, 502, ErrorKind.UPSTREAM), 502, "upstream"),
        (remote(RemoteError, 302, ErrorKind.SERVICE), 502, "service"),  # not an HTTP error
        (remote(RemoteError, 999, ErrorKind.SERVICE), 502, "service"),
        (InvalidReply("x", **WHERE), 502, "bad_reply"),
        (InvalidName("service", "1x", "bad"), 404, "unknown_route"),
        (OverflowError("int too big"), 400, "malformed"),
        (MessageTooLarge("shop.buy", 2_000_000, 1_048_576), 413, "too_large"),
        (RuntimeError("secret internals"), 500, "internal"),
    ],
)
def test_each_failure_has_its_status_and_kind(exc: BaseException, status: int, kind: str) -> None:
    error = from_exception(exc)
    assert (error.status, error.kind) == (status, kind)
    body = json.loads(error.body())
    assert set(body) == {"error"}
    assert body["error"]["code"] == status
    assert body["error"]["kind"] == kind
    assert "Traceback" not in error.message
    assert "secret" not in error.message


def test_overloaded_says_when_to_retry() -> None:
    for error in (overloaded(), from_exception(remote(Overloaded, 503, ErrorKind.OVERLOADED))):
        assert (b"retry-after", b"1") in error.headers


def test_validation_details_are_field_paths_and_reasons_only() -> None:
    details = [
        {"loc": ["items", 0, "price"], "msg": "Input should be a number", "type": "float_type"},
        {"loc": ["x" * 500], "msg": "m" * 5000, "type": "t", "input": "SECRET-INPUT", "ctx": {}},
        {"loc": "not a list", "msg": None},
    ] + [{"loc": ["n"], "msg": "again", "type": "t"}] * 100
    error = from_exception(remote(InvalidRequest, 422, ErrorKind.VALIDATION, details=details))
    body = json.loads(error.body())["error"]
    assert body["details"][0] == {
        "loc": ["items", "0", "price"],
        "msg": "Input should be a number",
        "type": "float_type",
    }
    assert "SECRET-INPUT" not in error.body().decode()
    assert len(body["details"][1]["loc"][0]) <= 64
    assert len(body["details"][1]["msg"]) <= 256
    assert body["details"][2]["loc"] == []
    assert len(body["details"]) == 50


def test_error_body_shape() -> None:
    assert json.loads(error_body(404, "unknown_route", "no route")) == {
        "error": {"code": 404, "kind": "unknown_route", "message": "no route"}
    }
    assert GatewayError(400, "bad_path", "why").body() == error_body(400, "bad_path", "why")
