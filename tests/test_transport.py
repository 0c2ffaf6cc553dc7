"""natsmesh._transport's Requester against a real nats-server: the frames it writes itself."""

from __future__ import annotations

from typing import Any

import nats
import nats.errors
import pytest

from natsmesh._transport import NoResponse, Requester

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
