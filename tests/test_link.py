"""The Link (natsmesh.transport._link) against a real nats-server: what it owns, what
it leaves to its user, and nats-py's outcomes as natsmesh's.
"""

from __future__ import annotations

import anyio
import nats
import pytest
from services import Echo

from natsmesh import Mesh, MessageTooLarge, NatsUnreachable, ServiceRunner
from natsmesh.testing import free_port
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Msg, NoReply, NoResponse

pytestmark = pytest.mark.anyio


async def test_a_connection_it_made_is_its_own_and_released(nats_url: str) -> None:
    link = await Link.open(nats_url, name="test-link")
    assert link.owned
    assert link.is_connected
    await link.release()
    assert link.is_closed
    await link.release()  # twice: nothing left to do


async def test_a_users_connection_is_wrapped_never_closed(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        link = await Link.open(nc, name="unused")
        assert not link.owned
        assert link.nats is nc
        assert not (await Link.open(link, name="unused")).owned
        await link.release()
        assert nc.is_connected
        # The same through the public API: a Mesh and a runner on it, entered and left.
        async with ServiceRunner(Echo, nats=nc), Mesh(nc) as mesh:
            item = {"id": 3, "name": "x"}
            assert await mesh.call("echo.echo", item) == item
            assert mesh.nats is nc
        assert nc.is_connected
        await nc.flush()
    finally:
        await nc.close()


async def test_subscribe_is_live_after_its_flush(nats_url: str) -> None:
    link = await Link.open(nats_url, name="test-link")
    other = await Link.open(nats_url, name="test-other")
    try:
        got: list[Msg] = []
        arrived = anyio.Event()

        async def on_msg(msg: Msg) -> None:
            got.append(msg)
            arrived.set()

        await link.subscribe("link.flush", cb=on_msg)
        await link.flush()
        await other.publish("link.flush", b"first", headers={"X-One": "1"})
        with anyio.fail_after(5):
            await arrived.wait()
        assert got[0].data == b"first"
        assert got[0].headers == {"X-One": "1"}
    finally:
        await other.release()
        await link.release()


async def test_requests_end_as_natsmesh_outcomes(nats_url: str) -> None:
    link = await Link.open(nats_url, name="test-link")
    try:
        with pytest.raises(NoResponse):
            await link.request("link.nobody", b"", timeout=2)
        await link.subscribe("link.silent", cb=_ignore)
        await link.flush()
        with pytest.raises(NoReply):
            await link.request("link.silent", b"", timeout=0.2)
        with pytest.raises(MessageTooLarge) as too_large:
            await link.publish("link.big", b"x" * (link.max_payload + 1))
        assert too_large.value.max_payload == link.max_payload
        with pytest.raises(MessageTooLarge):
            await link.request("link.big", b"x" * (link.max_payload + 1), timeout=1)
        await link.ping(5)
        assert link.zone == ""  # a standalone server
    finally:
        await link.release()


async def _ignore(msg: Msg) -> None:
    del msg


async def test_hostile_subjects_are_refused_before_the_wire(nats_url: str) -> None:
    link = await Link.open(nats_url, name="test-link")
    try:
        for subject in ("a b", "a\r\nPUB x 1", ""):
            with pytest.raises(Exception):  # noqa: B017, PT011 - nats-py's own BadSubjectError
                await link.publish(subject, b"x")
        await link.ping(5)  # the connection survived every one of them
    finally:
        await link.release()


async def test_no_server_is_natsmesh_unreachable() -> None:
    with pytest.raises(NatsUnreachable):
        await Link.open(f"nats://127.0.0.1:{free_port()}", name="t", give_up_after=0.5)


async def test_ping_fails_on_a_closed_link_and_mesh(nats_url: str) -> None:
    async with Mesh(nats_url, name="pinger") as mesh:
        await mesh.ping(timeout=5)
        assert mesh.max_payload > 0
        await mesh.nats.close()
        with pytest.raises(Exception):  # noqa: B017, PT011 - nats-py's ConnectionClosedError
            await mesh.ping(timeout=1)
    with pytest.raises(RuntimeError):
        await mesh.ping(timeout=1)
