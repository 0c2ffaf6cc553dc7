"""``Mesh.call`` (client/_client, _replies): encoding, and replies to results or typed
errors, against a real nats-server whose "service" is a plain subscription that
answers what each test tells it to, hostile answers included.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import msgpack
import nats
import pydantic
import pytest
from nats.aio.msg import Msg

from natsmesh import (
    DeadlineExceeded,
    InvalidReply,
    InvalidRequest,
    Mesh,
    Overloaded,
    RemoteError,
    UnknownEndpoint,
)
from natsmesh.transport._flush import flush
from natsmesh.wire import _headers

pytestmark = pytest.mark.anyio

SUBJECT = "mesh.svc.op"


class Point(pydantic.BaseModel):
    x: int
    y: int


Answer = Callable[[Msg], tuple[bytes, dict[str, str] | None]]


@contextlib.asynccontextmanager
async def answering(url: str, answer: Answer) -> AsyncIterator[list[Msg]]:
    """A subscription on the endpoint's subject that replies ``answer(request)``."""
    seen: list[Msg] = []
    nc = await nats.connect(url)

    async def reply(msg: Msg) -> None:
        seen.append(msg)
        data, headers = answer(msg)
        await nc.publish(msg.reply, data, headers=headers)

    try:
        await nc.subscribe(SUBJECT, queue="q", cb=reply)
        await flush(nc)
        yield seen
    finally:
        await nc.close()


def error(code: str, kind: str = "", message: str = "no", body: bytes = b"") -> Answer:
    headers = {_headers.ERROR_CODE: code, _headers.ERROR: message}
    if kind:
        headers[_headers.ERROR_KIND] = kind
    return lambda _: (body, headers)


async def test_a_model_goes_out_as_msgpack_and_comes_back_validated(nats_url: str) -> None:
    async with (
        answering(nats_url, lambda m: (m.data, None)) as seen,
        Mesh(nats_url, tables=False) as mesh,
    ):
        assert await mesh.call("svc.op", Point(x=1, y=2), response=Point) == Point(x=1, y=2)
        assert msgpack.unpackb(seen[0].data) == {"x": 1, "y": 2}
        assert await mesh.call("svc.op", b"\x92\x01", response=bytes) == b"\x92\x01"
        assert await mesh.call("svc.op", [1, 2]) == [1, 2]
        headers = seen[0].headers or {}
        assert headers[_headers.CALLER] == "client"
        assert _headers.ATTEMPT not in headers  # a first try says nothing


@pytest.mark.parametrize(
    ("answer", "raised", "check"),
    [
        (error("404", "unknown_endpoint"), UnknownEndpoint, lambda e: e.code == 404),
        (error("422", "validation"), InvalidRequest, lambda e: e.code == 422),
        (error("504", "deadline"), DeadlineExceeded, lambda e: "inside svc.op" in str(e)),
        (error("500"), RemoteError, lambda e: e.code == 500),
        # Hostile codes and messages: a code that is no 3-digit number is a 500, a
        # message is cut at 1024 characters.
        (error("99999"), RemoteError, lambda e: e.code == 500),
        (error("-1"), RemoteError, lambda e: e.code == 500),
        (error("abc", message="m" * 5000), RemoteError, lambda e: len(e.message) == 1024),
        # A body that is not what its kind promises: the headers still tell the error.
        (error("422", "validation", body=b"\xc1garbage"), InvalidRequest, lambda e: not e.details),
        (
            error("422", "validation", body=b"\x80" * (70 * 1024)),
            InvalidRequest,
            lambda e: not e.details,
        ),
    ],
)
async def test_an_error_reply_raises_its_typed_error_once(
    nats_url: str, answer: Answer, raised: type[Exception], check: Callable[[object], bool]
) -> None:
    async with answering(nats_url, answer) as seen, Mesh(nats_url, tables=False) as mesh:
        with pytest.raises(raised) as caught:
            await mesh.call("svc.op", {})
        assert check(caught.value)
        assert len(seen) == 1  # none of these is retried


async def test_overloaded_is_retried_then_raised(nats_url: str) -> None:
    async with (
        answering(nats_url, error("503", "overloaded")) as seen,
        Mesh(nats_url, tables=False) as mesh,
    ):
        with pytest.raises(Overloaded):
            await mesh.call("svc.op", {})
        assert [(m.headers or {}).get(_headers.ATTEMPT, "1") for m in seen] == ["1", "2", "3"]
        assert mesh.metrics()["svc"]["retries"] == 2


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\x92\x01", msgpack.packb({"x": "not a number", "y": 1}), b"", b"\xdd" * 10],
)
async def test_a_reply_that_does_not_decode_or_validate_is_an_invalid_reply(
    nats_url: str, data: bytes
) -> None:
    async with (
        answering(nats_url, lambda _: (data, None)) as seen,
        Mesh(nats_url, tables=False) as mesh,
    ):
        with pytest.raises(InvalidReply, match=r"invalid reply from svc\.op"):
            await mesh.call("svc.op", {}, response=Point)
        assert len(seen) == 1  # decoding is the client's, after the loop: never retried


@pytest.mark.parametrize("caller", ["", " x", "a\r\nb", "é", "x" * 257])
async def test_a_bad_caller_name_is_refused_before_anything_is_sent(
    nats_url: str, caller: str
) -> None:
    async with answering(nats_url, lambda m: (m.data, None)) as seen:
        async with Mesh(nats_url, tables=False) as mesh:
            with pytest.raises(ValueError, match="caller"):
                await mesh.call("svc.op", {}, caller=caller)
        assert seen == []


async def test_a_call_outside_async_with_is_refused() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await Mesh("nats://127.0.0.1:1").call("svc.op")
