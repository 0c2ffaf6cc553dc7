"""The gateway's connection wrappers (gateway._transports) on a real event loop, and the
keep-alive timeout they give uvicorn's httptools protocol over real sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from gateway_env import running_shop, serving
from sockets import answer, keep_alive, post
from waits import next_turn

from gateway import GatewayLimits, _server, create_app
from gateway._transports import IdleTimer, OneSend

pytestmark = pytest.mark.anyio

ECHO = b'{"id": 1, "name": "a"}'


class _Recorded(asyncio.Transport):
    """A transport that keeps what is written to it, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))


async def test_a_head_and_its_body_leave_in_one_write() -> None:
    loop = asyncio.get_running_loop()
    first, second = _Recorded(), _Recorded()
    one, other = OneSend(first, loop), OneSend(second, loop)
    one.write(b"HTTP/1.1 200 OK\r\n\r\n")
    other.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # a head with no body behind it
    one.write(b"body")
    assert first.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert second.writes == []
    await next_turn()  # the loop's next turn sends what is still held
    assert second.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert first.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    one.write(b"")  # nothing held, nothing to send
    await next_turn()  # a turn with nothing held: no write
    assert first.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]


async def test_a_held_write_goes_out_before_close() -> None:
    recorded = _Recorded()
    closed: list[bool] = []
    recorded.close = lambda: closed.append(True)  # type: ignore[method-assign]
    one = OneSend(recorded, asyncio.get_running_loop())
    one.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    one.close()
    assert recorded.writes == [b"HTTP/1.1 408 Request Timeout\r\n\r\n"]
    assert closed == [True]
    await next_turn()  # the turn's flush finds nothing left
    assert len(recorded.writes) == 1


async def test_the_idle_timer_expires_only_after_a_whole_idle_period() -> None:
    loop = asyncio.get_running_loop()
    expired = anyio.Event()
    when: list[float] = []

    def expire() -> None:
        when.append(loop.time())
        expired.set()

    timer = IdleTimer(loop, 0.2, expire)
    started = loop.time()
    for _ in range(4):  # busy, then idle again, sooner than the timeout each time
        timer.idle()
        await asyncio.sleep(0.1)  # idle for half the timeout: time must pass
        timer.busy()
    last_idle = loop.time()
    timer.idle()
    with anyio.fail_after(5):
        await expired.wait()
    assert when[0] - last_idle >= 0.2 - 0.01  # counted from the last idle(), not the first
    assert when[0] - started >= 0.6
    timer.idle()
    timer.cancel()  # a closed connection: never expires
    # A witness armed after it: once the witness expires, so would have the cancelled one.
    witnessed = anyio.Event()
    IdleTimer(loop, 0.2, witnessed.set).idle()
    with anyio.fail_after(5):
        await witnessed.wait()
    assert len(when) == 1


@pytest.fixture
async def short_keep_alive(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    monkeypatch.setattr(_server, "KEEP_ALIVE", 1.0)
    limits = GatewayLimits(read_timeout=5.0)
    async with running_shop(nats_url) as shop:
        app = create_app(shop.mesh, limits=limits)
        async with serving(app, limits=limits, http=request.param) as url:
            yield url


def _closed_by_server(sock: socket.socket, wait: float) -> float:
    """Seconds until the server closes ``sock`` (at most ``wait``; then AssertionError)."""
    started = time.monotonic()
    sock.settimeout(wait)
    try:
        assert sock.recv(1) == b""
    except TimeoutError:
        raise AssertionError(f"the server kept an idle connection open for {wait} s") from None
    return time.monotonic() - started


@pytest.mark.parametrize("short_keep_alive", ["httptools", "h11"], indirect=True)
async def test_a_keep_alive_connection_closes_when_idle_not_while_in_use(
    short_keep_alive: str,
) -> None:
    url = short_keep_alive

    def use_then_idle() -> float:
        sock = keep_alive(url, "/echo/echo", ECHO, requests=1)
        with sock:
            # Requests 0.4 s apart for twice the 1 s timeout: the connection stays open.
            for _ in range(5):
                time.sleep(0.4)  # idle, shorter than the timeout: time must pass
                again = keep_alive_on(sock)
                assert again.startswith(b"HTTP/1.1 200 "), again
            return _closed_by_server(sock, 5.0)

    idle = await anyio.to_thread.run_sync(use_then_idle)
    assert idle >= 0.9  # one whole timeout after the last answer


@pytest.mark.parametrize("short_keep_alive", ["httptools", "h11"], indirect=True)
async def test_pipelined_requests_head_and_close_over_one_connection(
    short_keep_alive: str,
) -> None:
    host, port = short_keep_alive.removeprefix("http://").rsplit(":", 1)
    bodies = [b'{"id": %d, "name": "n%d"}' % (n, n) for n in range(3)]

    def talk() -> float:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            reader = sock.makefile("rb")
            # Three requests in one send: three answers, in order, on the same connection.
            sock.sendall(b"".join(post("/echo/echo", body) for body in bodies))
            for n in range(3):
                status, _, got = answer(reader)
                assert status.startswith(b"HTTP/1.1 200 "), status
                assert b'"n%d"' % n in got
            # A HEAD answer has a head and no body: it must still leave at once.
            sock.sendall(b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            status, _, _ = answer(reader, head_only=True)
            assert status.startswith(b"HTTP/1.1 200 "), status
            # Still open after all of it; then idle, and closed by the keep-alive timeout.
            sock.sendall(post("/echo/echo", bodies[0]))
            status, _, _ = answer(reader)
            assert status.startswith(b"HTTP/1.1 200 "), status
            reader.close()
            return _closed_by_server(sock, 5.0)

    assert await anyio.to_thread.run_sync(talk) >= 0.9

    def close_asked() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(post("/echo/echo", bodies[1], b"connection: close\r\n"))
            received = b""
            while chunk := sock.recv(65536):  # until the server closes: no idle wait
                received += chunk
            return received

    closing = await anyio.to_thread.run_sync(close_asked)
    assert closing.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in closing.lower()


def keep_alive_on(sock: socket.socket) -> bytes:
    """One more POST on an open connection; its answer's status line."""
    sock.sendall(post("/echo/echo", ECHO))
    with sock.makefile("rb") as reader:
        status, _, _ = answer(reader)
    return status
