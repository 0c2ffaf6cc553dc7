"""The seam to NATS (natsmesh.transport._transport) against a real nats-server.

The Requester on both of its paths: the frames it writes itself (the fast path, where
_nats_internals' guard allows) and nats-py's own publish() (``direct=False``, the
fallback on an untested nats-py); refusal events; nats-py's errors as natsmesh's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import pytest

from natsmesh import MessageTooLarge, PermissionDenied
from natsmesh.ops._embedded import EmbeddedNats
from natsmesh.transport import _nats_internals, _transport
from natsmesh.transport._nats_internals import listen_refusals
from natsmesh.transport._transport import NoReply, NoResponse, Requester, new_id

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


@pytest.mark.parametrize("direct", [None, False], ids=["frames", "publish"])
async def test_what_it_sends_arrives_as_sent(nats_url: str, direct: bool | None) -> None:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.subscribe("echo.*")
        async with Requester(nc, direct=direct) as requester:
            assert (requester._writer is None) == (direct is False)

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


@pytest.mark.parametrize("direct", [None, False], ids=["frames", "publish"])
async def test_what_publish_refuses_it_refuses_the_same_way(
    nats_url: str, direct: bool | None
) -> None:
    nc = await nats.connect(nats_url)
    requester = Requester(nc, direct=direct)
    with pytest.raises(nats.errors.BadSubjectError):
        await requester.publish("bad subject", b"")
    with pytest.raises(nats.errors.BadHeaderError):
        await requester.publish("a.subject", b"", {"bad name": "x"})
    with pytest.raises(MessageTooLarge) as too_large:
        await requester.publish("a.subject", b"x" * (nc.max_payload + 1))
    assert too_large.value.max_payload == nc.max_payload
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await requester.publish("a.subject", b"")


async def test_an_untested_nats_py_sends_through_publish(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_nats_internals, "TESTED_NATS_PY", ("0.0.",))
    nc = await nats.connect(nats_url)
    try:
        async with Requester(nc) as requester:
            assert requester._writer is None

            async def echo(msg: Any) -> None:
                await requester.publish(msg.reply, msg.data)

            await nc.subscribe("svc.echo", cb=echo)
            await nc.flush()
            reply = await requester.request("svc.echo", b"x", timeout=5, headers={"A": "b"})
            assert reply.data == b"x"
    finally:
        await nc.close()


async def _ignore(what: Any) -> None:
    pass


async def test_a_request_nobody_answers_times_out(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe("svc.silent", cb=_ignore)  # takes, never answers
        await nc.flush()
        async with Requester(nc, tick=0.001) as requester:
            with pytest.raises(NoReply):
                await requester.request("svc.silent", b"", timeout=0.05, headers=None)
            assert not requester._pending
    finally:
        await nc.close()


async def test_the_module_request_maps_nats_pys_errors(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        with pytest.raises(NoResponse):
            await _transport.request(nc, "nobody", b"", timeout=5, headers={})
        with pytest.raises(MessageTooLarge):
            await _transport.publish(nc, "big", b"x" * (nc.max_payload + 1))
    finally:
        await nc.close()


def test_new_ids_are_unique_nuids() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 and i.isalnum() for i in ids)


# -- refusals: a publish the server's permissions refuse fails its request at once ----------

RESTRICTED = """
authorization {
  users = [
    {user: caller, password: secret, permissions: {
      publish: {allow: ["allowed.>", "_INBOX.>"]}, subscribe: {allow: [">"]}}}
  ]
}
"""


@pytest.fixture
def restricted(tmp_path: Path) -> Iterator[str]:
    conf = tmp_path / "restricted.conf"
    conf.write_text(RESTRICTED)
    server = EmbeddedNats(config_file=conf)
    server.start()
    try:
        yield server.url.replace("nats://", "nats://caller:secret@")
    finally:
        server.stop()


@pytest.mark.parametrize("direct", [None, False], ids=["frames", "publish"])
async def test_a_refused_publish_fails_its_request_at_once(restricted: str, direct: Any) -> None:
    nc = await _transport.connect(restricted, name="refused", give_up_after=10)
    try:
        async with Requester(nc, direct=direct) as requester:
            with anyio.fail_after(10), pytest.raises(PermissionDenied) as denied:
                await requester.request("Forbidden.Subject", b"", timeout=60, headers=None)
            assert denied.value.subject == "Forbidden.Subject"
    finally:
        await nc.close()


async def test_a_users_own_connection_keeps_its_error_callback(restricted: str) -> None:
    theirs: list[str] = []

    async def on_error(exc: Exception) -> None:
        theirs.append(str(exc))

    nc = await nats.connect(restricted, error_cb=on_error)
    try:
        async with Requester(nc) as requester:
            with anyio.fail_after(10), pytest.raises(PermissionDenied):
                await requester.request("forbidden", b"", timeout=60, headers=None)
        assert any("permissions violation" in t.lower() for t in theirs)
    finally:
        await nc.close()


async def test_on_an_untested_nats_py_a_refusal_waits_out_its_timeout(
    restricted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_nats_internals, "TESTED_NATS_PY", ("0.0.",))
    nc = await nats.connect(restricted, error_cb=_ignore)
    try:
        async with Requester(nc, tick=0.001) as requester:
            with pytest.raises(NoReply):
                await requester.request("forbidden", b"", timeout=0.2, headers=None)
    finally:
        await nc.close()


async def test_garbage_on_the_error_callback_is_no_refusal(restricted: str) -> None:
    nc = await _transport.connect(restricted, name="garbage", give_up_after=10)
    heard: list[str] = []
    try:
        stop = listen_refusals(nc, heard.append)
        assert stop is not None
        for text in (
            "",
            "permissions violation",
            'permissions violation for publish to "',
            "x" * 10**5,
        ):
            await nc._error_cb(Exception(text))
        assert heard == []
        stop()
    finally:
        await nc.close()


# -- a whole call on the public paths only (what an untested nats-py gets) -------------------


@pytest.mark.parametrize("internals", ["", "1"], ids=["internals", "no-internals"])
async def test_a_mesh_call_works_with_and_without_internals(
    nats_url: str, internals: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services import Echo, Item

    from natsmesh import Mesh, ServiceRunner

    monkeypatch.setenv("NATSMESH_NO_INTERNALS", internals)
    async with ServiceRunner(Echo(), nats=nats_url), Mesh(nats_url, name="t") as mesh:
        assert (mesh._requester._writer is None) == (internals == "1")  # type: ignore[union-attr]
        for i in range(20):
            item = Item(id=i, name="café ☕")
            assert await mesh.call("echo.echo", item, response=Item, timeout=5) == item


# -- a server that goes away and comes back ----------------------------------------------------


async def test_requests_fail_while_the_server_is_gone_and_work_once_it_is_back() -> None:
    server = EmbeddedNats(jetstream=False)
    server.start()
    port = server.port
    back = anyio.Event()

    async def on_reconnect() -> None:
        back.set()

    nc = await nats.connect(
        server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1, reconnected_cb=on_reconnect
    )
    try:
        async with Requester(nc, tick=0.001) as requester:

            async def echo(msg: Any) -> None:
                await requester.publish(msg.reply, msg.data)

            await nc.subscribe("svc.echo", cb=echo)
            await nc.flush()
            assert (await requester.request("svc.echo", b"1", timeout=5, headers=None)).data == b"1"
            server.stop()
            # Not connected: the frame writer steps aside, nats-py buffers, the deadline ends it.
            with pytest.raises(NoReply):
                await requester.request("svc.echo", b"2", timeout=0.2, headers={"A": "b"})
            assert not requester._pending
            server = EmbeddedNats(jetstream=False, port=port)
            server.start()
            with anyio.fail_after(20):
                await back.wait()
            reply = await requester.request("svc.echo", b"3", timeout=5, headers={"A": "b"})
            assert reply.data == b"3"
    finally:
        await nc.close()
        server.stop()
