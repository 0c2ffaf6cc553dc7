"""natsmesh's nats-py internals (transport/_nats_internals) against a real nats-server.

Each internal is tested on the fast path (this nats-py, in TESTED_NATS_PY) and on its
fallback (an untested version, or NATSMESH_NO_INTERNALS=1): both must behave alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from waits import eventually

from natsmesh.transport import _nats_internals, _transport
from natsmesh.transport._delivery import DirectDelivery
from natsmesh.transport._nats_internals import (
    CachedHeaders,
    FrameWriter,
    _HandOver,
    fast_header_parse,
    hand_over,
    header_lines,
    internals_allowed,
    listen_refusals,
    server_zone,
)
from natsmesh.transport._transport import NATS, Requester, subscribe_direct

pytestmark = pytest.mark.anyio


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    """A connection made the way natsmesh makes its own (internals installed)."""
    conn = await _transport.connect(nats_url, name="internals")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def untested(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nats-py version the internals were not tested with."""
    monkeypatch.setattr(_nats_internals, "TESTED_NATS_PY", ("0.0.",))


# -- the guard -----------------------------------------------------------------------------


def test_the_installed_nats_py_is_a_tested_one() -> None:
    # A new nats-py release must be tested (and added to TESTED_NATS_PY) before it counts.
    assert internals_allowed()
    assert not internals_allowed("2.17.0")
    assert not internals_allowed("3.0.0")


def test_no_internals_in_the_environment_turns_them_all_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NATSMESH_NO_INTERNALS", "1")
    assert not internals_allowed()
    monkeypatch.setenv("NATSMESH_NO_INTERNALS", "0")
    assert internals_allowed()


async def test_an_untested_nats_py_gets_no_frame_writer(nats_url: str, untested: None) -> None:
    nc = await nats.connect(nats_url)
    try:
        assert FrameWriter.for_connection(nc) is None
        assert not fast_header_parse(nc)
        assert server_zone(nc) == ""
        assert listen_refusals(nc, lambda subject: None) is None
    finally:
        await nc.close()


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
    monkeypatch.setattr(_nats_internals, "TESTED_NATS_PY", ("0.0.",))
    nc = await nats.connect(nats_url)
    try:
        async with Requester(nc) as requester:
            await _echo(nc, requester)
            assert isinstance(requester._sub._pending_queue, asyncio.Queue)  # type: ignore[union-attr]
            assert not isinstance(nc._process_msg, DirectDelivery)
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
        # nats-py signals no event when a message is queued behind a busy callback.
        await eventually(lambda: seen and not sub._pending_queue.empty(), within=5, every=0.01)
        assert not hand_over(sub, lambda msg: seen.append(msg.data))
        assert isinstance(sub._pending_queue, asyncio.Queue)
    finally:
        await nc.close()


def _never_ready(seen: list[bytes]) -> Any:
    async def slow(msg: Any) -> None:
        seen.append(msg.data)
        await asyncio.Event().wait()  # never set: the callback never returns

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


# -- DirectDelivery: handed-over messages past nats-py's _process_msg ------------------------

SENT: list[tuple[bytes, dict[str, str] | None]] = [
    (b"plain", None),
    (b"", {"Mesh-Budget-Ms": "4999", "Mesh-Caller": "bench"}),
    (b"unicode", {"X-Unicode": "caf\u00e9 \u2615", "X-Pad": "p"}),
    (b"empty block", {}),
    (b"\x00\xff" * 100, {"Nats-Service-Error-Code": "500"}),
]


async def test_a_direct_subscription_sees_what_nats_pys_delivery_sees(nc: NATS) -> None:
    direct: list[Any] = []
    all_in = anyio.Event()

    def deliver(msg: Any) -> None:
        direct.append(msg)
        if len(direct) == 2 * len(SENT):
            all_in.set()

    sub = await subscribe_direct(nc, "both", deliver)
    plain = await nc.subscribe("both")  # nats-py's own path, on the same connection
    assert isinstance(nc._process_msg, DirectDelivery)
    before = nc.stats["in_msgs"]
    for data, headers in SENT + SENT:  # twice: blocks parsed, then remembered
        await nc.publish("both", data, reply="answer.here", headers=headers)
    seen = [await plain.next_msg(timeout=5) for _ in SENT + SENT]
    with anyio.fail_after(5):
        await all_in.wait()
    shape = [(m.subject, m.reply, m.data, m.headers, m._client) for m in seen]
    assert [(m.subject, m.reply, m.data, m.headers, m._client) for m in direct] == shape
    assert [m._sid for m in direct] == [sub._id] * 2 * len(SENT)
    assert sub._received == 2 * len(SENT)
    assert nc.stats["in_msgs"] == before + 4 * len(SENT)
    # Each message its own headers: a receiver's change shows in no other message.
    direct[1].headers["Mesh-Caller"] = "changed by the receiver"
    assert direct[len(SENT) + 1].headers == seen[1].headers == SENT[1][1]


async def test_a_direct_subscriber_answers_with_respond(nc: NATS) -> None:
    tasks: list[Any] = []

    def answer(msg: Any) -> None:
        tasks.append(asyncio.ensure_future(msg.respond(msg.data.upper())))

    await subscribe_direct(nc, "shout", answer)
    reply = await nc.request("shout", b"hi", timeout=5)
    assert reply.data == b"HI"


async def test_a_late_message_for_a_gone_subscription_is_dropped(nc: NATS) -> None:
    seen: list[bytes] = []
    sub = await subscribe_direct(nc, "gone", lambda msg: seen.append(msg.data))
    delivery = nc._process_msg
    assert isinstance(delivery, DirectDelivery)
    assert sub._id in delivery.receivers
    await sub.unsubscribe()
    # What the reader would hand over had the message crossed the UNSUB on the wire.
    await delivery(sub._id, b"gone", b"", b"late", None)
    assert seen == []
    assert sub._id not in delivery.receivers  # forgotten: ids are never reused


async def test_a_limit_on_a_direct_subscription_is_kept(nc: NATS) -> None:
    seen: list[bytes] = []
    sub = await subscribe_direct(nc, "limited", lambda msg: seen.append(msg.data))
    await sub.unsubscribe(limit=2)  # nats-py's own path counts it down, and unsubscribes
    after = await nc.subscribe("after")
    for i in range(4):
        await nc.publish("limited", b"%d" % i)
    await nc.publish("after", b"")  # from one publisher, delivered in order
    await after.next_msg(timeout=5)
    assert seen == [b"0", b"1"]
    assert sub._id not in nc._subs


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


async def test_connections_parse_headers_with_header_lines(nc: NATS) -> None:
    assert nc._parse_header_lines is header_lines
    sub = await nc.subscribe("h")
    sent = {"Mesh-Budget-Ms": "4999", "X-Unicode": "café ☕", "X-Pad": "p"}
    await nc.publish("h", b"", headers=sent)
    assert (await sub.next_msg(timeout=5)).headers == sent


# -- CachedHeaders: a block's parse remembered -----------------------------------------------

BLOCK = st.builds(
    lambda status, lines: b"NATS/1.0" + status + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n",
    st.sampled_from([b"", b" 503", b" 404 No Messages", b" 100 Idle Heartbeat", b" x"]),
    st.lists(LINE, max_size=4),
)


@settings(max_examples=300)
@given(st.lists(BLOCK, min_size=1, max_size=4))
def test_a_remembered_parse_is_nats_pys_parse(blocks: list[bytes]) -> None:
    async def both() -> None:
        fresh, remembering = NATS(), NATS()
        fresh._parse_header_lines = remembering._parse_header_lines = header_lines  # type: ignore[method-assign]
        cached = CachedHeaders(remembering._process_headers)
        for block in blocks + blocks:  # each block twice: parsed, then remembered
            expected, got = (
                await _outcome(fresh._process_headers, block),
                await _outcome(cached, block),
            )
            assert got == expected
            if isinstance(got, dict):
                got["Mutated"] = "by the receiver"  # a copy: the next answer is untouched

    asyncio.run(both())


async def _outcome(process: Any, block: bytes) -> Any:
    try:
        return await process(block)
    except Exception as exc:  # nats-py's own parse raises on some status lines: so must ours
        return type(exc)


async def test_connections_remember_header_blocks_and_hand_out_copies(nc: NATS) -> None:
    cache = nc._process_headers
    assert isinstance(cache, CachedHeaders)
    sub = await nc.subscribe("h")
    sent = {"Mesh-Budget-Ms": "4999", "Mesh-Caller": "bench"}
    for _ in range(2):
        await nc.publish("h", b"", headers=sent)
    first = await sub.next_msg(timeout=5)
    assert first.headers == sent
    first.headers["Mesh-Caller"] = "changed by the receiver"
    assert (await sub.next_msg(timeout=5)).headers == sent
    assert len(cache.seen) == 1


async def test_hostile_header_blocks_cannot_grow_the_cache(nc: NATS) -> None:
    cache = nc._process_headers
    assert isinstance(cache, CachedHeaders)
    sub = await nc.subscribe("h")
    unique = [{"X-Flood": str(i)} for i in range(2500)]
    big = {"X-Big": "b" * 4000}
    unicode = {"X-Unicode": "café ☕"}
    for headers in (*unique, big, unicode):
        await nc.publish("h", b"", headers=headers)
    for headers in (*unique, big, unicode):
        assert (await sub.next_msg(timeout=5)).headers == headers
    assert 0 < len(cache.seen) <= 1024
    assert all(len(block) < 256 and block.isascii() for block in cache.seen)
    async with Requester(nc) as requester:
        for _ in range(2):  # a remembered "503" still means no responders
            with pytest.raises(_transport.NoResponse):
                await requester.request("nobody", b"", timeout=5, headers=None)
