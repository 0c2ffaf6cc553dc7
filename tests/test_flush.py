"""``flush``: once it returns, the server has processed what was sent before it.

The relay below hands the server each protocol line on its own, a little apart, as
a busy network may: nats-py 2.16's ``flush()`` then returns before a SUB written
just before it reaches the server (its PING overtakes the SUB), and a message
another connection publishes at that moment is lost. natsmesh's ``flush`` is not
overtaken, with nats-py's internals or without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import nats
import pytest

from natsmesh.transport._flush import flush
from natsmesh.transport._nats_internals import NO_INTERNALS_ENV, internals_allowed

pytestmark = pytest.mark.anyio

#: Between two lines the relay hands on: longer than a PING's round trip on loopback.
LINE_GAP = 0.05


async def _lines_apart(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    buffered = b""
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        async for data in source:
            buffered += data
            *lines, buffered = buffered.split(b"\r\n")
            for line in lines:
                await sink.send(line + b"\r\n")
                await anyio.sleep(LINE_GAP)


async def _as_is(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        async for data in source:
            await sink.send(data)


@contextlib.asynccontextmanager
async def line_relay(upstream: str) -> AsyncIterator[str]:
    """A TCP relay to ``upstream`` that sends the client's lines to the server one by one."""
    host, upstream_port = upstream.removeprefix("nats://").rsplit(":", 1)

    async def carry(client: anyio.abc.SocketStream) -> None:
        async with (
            client,
            await anyio.connect_tcp(host, int(upstream_port)) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(_as_is, server, client)
            await _lines_apart(client, server)
            tg.cancel_scope.cancel()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, carry)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610  # anyio's
        yield f"nats://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def _first_message_arrives(nats_url: str, flushed: object) -> bool:
    async with line_relay(nats_url) as relayed:
        slow = await nats.connect(relayed)
        fast = await nats.connect(nats_url)
        try:
            sub = await slow.subscribe("t.first")
            await flushed(slow)  # type: ignore[operator]
            await fast.publish("t.first", b"1")
            await fast.flush()
            try:
                await sub.next_msg(timeout=LINE_GAP * 20)
            except nats.errors.TimeoutError:
                return False
            return True
        finally:
            await fast.close()
            await slow.close()


@pytest.mark.parametrize("internals", [True, False], ids=["internals", "public"])
async def test_after_flush_the_subscription_is_live(
    nats_url: str, internals: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not internals:
        monkeypatch.setenv(NO_INTERNALS_ENV, "1")
    elif not internals_allowed():
        pytest.skip("a nats-py natsmesh was not tested with: the public path only")
    for _ in range(3):
        assert await _first_message_arrives(nats_url, flush)


@pytest.mark.skipif(not internals_allowed(), reason="documents nats-py 2.16's flush")
async def test_nats_pys_own_flush_returns_before_the_subscription_is_live(nats_url: str) -> None:
    """Why ``flush`` exists: this fails once nats-py orders its PING (drop the module then)."""

    async def plain(nc: nats.NATS) -> None:
        await nc.flush()

    assert not await _first_message_arrives(nats_url, plain)


async def test_a_flush_on_a_closed_connection_raises(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await flush(nc)
