"""natsmesh _transport's Requester against a real nats-server: the frames it writes itself."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import nats
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsmesh.transport import _connection, _transport
from natsmesh.transport._connection import header_lines
from natsmesh.transport._transport import (
    NATS,
    NoResponse,
    Requester,
    _HandOver,
    hand_over,
    subscribe_direct,
)

pytestmark = pytest.mark.anyio

HEADERS = [
    None,
    {},
    {"Mesh-Budget-Ms": "4999", "Mesh-Caller": "tester"},
    {"Mesh-Budget-Ms": "1", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    {"X-Unicode": "café ☕", "Mesh-Attempt": "2"},
    # Values publish() rewrites (stripped, CR/LF made spaces): the Requester leaves them to it.
    {"X-Padded": "  padded  ", "X-Lines": "one\r\ntwo"},
    {"": "empty name", "X-Ok": "ok"},
]


@pytest.mark.parametrize("headers", HEADERS)
async def test_its_frames_are_those_publish_writes(nats_url: str, headers: Any) -> None:
    nc = await nats.connect(nats_url)
    try:
        requester = Requester(nc)
        # publish() returns with its frame still queued for the flusher task.
        await nc.publish("a.subject", b"payload", headers=headers)
        theirs = nc._pending[-1]
        await requester.publish("a.subject", b"payload", headers)
        assert nc._pending[-1] == theirs
    finally:
        await nc.close()


async def test_what_it_sends_arrives_as_sent(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe("echo.*")
        async with Requester(nc) as requester:

            async def echo(msg: Any) -> None:
                await requester.publish(msg.reply, msg.data, {"Seen": msg.headers["X-Unicode"]})

            await nc.subscribe("svc.echo", cb=echo)
            await nc.flush()
            reply = await requester.request(
                "svc.echo", b"\x00\xffdata", timeout=5, headers={"X-Unicode": "café ☕"}
            )
            assert reply.data == b"\x00\xffdata"
            assert reply.headers == {"Seen": "café ☕"}
            with pytest.raises(NoResponse):
                await requester.request("nobody.listens", b"", timeout=5, headers=None)
        await sub.unsubscribe()
    finally:
        await nc.close()


async def test_what_publish_refuses_it_refuses_the_same_way(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    requester = Requester(nc)
    with pytest.raises(nats.errors.BadSubjectError):
        await requester.publish("bad subject", b"")
    with pytest.raises(nats.errors.BadHeaderError):
        await requester.publish("a.subject", b"", {"bad name": "x"})
    with pytest.raises(nats.errors.MaxPayloadError):
        await requester.publish("a.subject", b"x" * (nc.max_payload + 1))
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await requester.publish("a.subject", b"")


# -- hand_over: messages go on as nats-py reads them -----------------------------------------


async def _echo(nc: Any, requester: Requester) -> None:
    async def echo(msg: Any) -> None:
        await requester.publish(msg.reply, msg.data, None)

    await nc.subscribe("svc.echo", cb=echo)
    await nc.flush()


async def test_replies_are_handed_over_on_a_tested_nats_py(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        async with Requester(nc) as requester:
            await _echo(nc, requester)
            assert isinstance(requester._sub._pending_queue, _HandOver)  # type: ignore[union-attr]
            replies = [
                await requester.request("svc.echo", b"%d" % i, timeout=5, headers=None)
                for i in range(20)
            ]
            assert [r.data for r in replies] == [b"%d" % i for i in range(20)]
    finally:
        await nc.close()


async def test_an_untested_nats_py_keeps_nats_pys_own_delivery(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_connection, "TESTED_NATS_PY", ("0.0.",))
    nc = await nats.connect(nats_url)
    try:
        async with Requester(nc) as requester:
            await _echo(nc, requester)
            assert isinstance(requester._sub._pending_queue, asyncio.Queue)  # type: ignore[union-attr]
            reply = await requester.request("svc.echo", b"x", timeout=5, headers=None)
            assert reply.data == b"x"
    finally:
        await nc.close()


async def test_a_subscription_with_messages_pending_is_not_handed_over(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        seen: list[bytes] = []
        sub = await nc.subscribe("busy", cb=_never_ready(seen))
        await nc.publish("busy", b"first")  # taken by the callback, which never returns
        await nc.publish("busy", b"second")  # so this one waits in the queue
        await nc.flush()
        with anyio.fail_after(5):
            while not seen or sub._pending_queue.empty():  # noqa: ASYNC110  (no event to wait on)
                await anyio.sleep(0.01)
        assert not hand_over(sub, lambda msg: seen.append(msg.data))
        assert isinstance(sub._pending_queue, asyncio.Queue)
    finally:
        await nc.close()


def _never_ready(seen: list[bytes]) -> Any:
    async def slow(msg: Any) -> None:
        seen.append(msg.data)
        await asyncio.sleep(3600)

    return slow


async def test_a_failing_delivery_costs_one_message_not_the_connection(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        seen: list[bytes] = []
        last = anyio.Event()

        def deliver(msg: Any) -> None:
            if msg.data == b"boom":
                raise RuntimeError("a bug in the receiver")
            seen.append(msg.data)
            if msg.data == b"two":
                last.set()

        await subscribe_direct(nc, "direct", deliver)
        for data in (b"one", b"boom", b"two"):
            await nc.publish("direct", data)
        # Not flush(): nats-server may answer the PING before it delivers to the same client.
        with anyio.fail_after(5):
            await last.wait()
        assert seen == [b"one", b"two"]
        assert nc.is_connected
    finally:
        await nc.close()


# -- header_lines: nats-py's header parse, faster for ASCII ----------------------------------

LINE = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda name, sep, value: name + sep + value,
        st.sampled_from(
            [b"Mesh-Budget-Ms", b" X-Pad ", b"Bad Name", b"\x1cX", b"X\x1f", b"", b"\xc3\xa9"]
        ),
        st.sampled_from([b":", b": ", b":\t", b""]),
        st.one_of(
            st.binary(max_size=20), st.sampled_from([b" 4999 ", b"\x1cv\x1c", "café".encode()])
        ),
    ),
)


@settings(max_examples=500)
@given(st.lists(LINE, max_size=6), st.booleans())
def test_header_lines_is_nats_pys_parse(lines: list[bytes], ending: bool) -> None:
    raw = b"\r\n".join(lines) + (b"\r\n\r\n" if ending else b"")
    assert header_lines(raw) == NATS._parse_header_lines(raw)


def test_header_lines_agrees_on_every_ascii_character() -> None:
    for code in range(128):
        c = bytes([code])
        for raw in (b"A" + c + b"B: v" + c + b"\r\n", c + b"Name" + c + b":" + c + b"v" + c):
            assert header_lines(raw) == NATS._parse_header_lines(raw), raw


async def test_connections_parse_headers_with_header_lines(nats_url: str) -> None:
    nc = await _transport.connect(nats_url, name="headers")
    try:
        assert nc._parse_header_lines is header_lines
        sub = await nc.subscribe("h")
        sent = {"Mesh-Budget-Ms": "4999", "X-Unicode": "café ☕", "X-Pad": "p"}
        await nc.publish("h", b"", headers=sent)
        assert (await sub.next_msg(timeout=5)).headers == sent
    finally:
        await nc.close()
