"""The gateway over real sockets: uvicorn in-process (both HTTP parsers) with tight limits,
and as a user runs it: ``natsmesh gateway`` (one worker and two) and ``natsmesh up``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
from gateway_env import Shop, recording, running_shop, serving
from procs import Proc
from sockets import children, keep_alive, no_delay, server_end

from gateway import GatewayLimits, _protocol, bind, create_app
from gateway._protocol import protocol_class
from natsmesh.testing import free_port

pytestmark = pytest.mark.anyio

LIMITS = GatewayLimits(read_timeout=0.5, max_headers=12, max_header_bytes=2048, max_body=4096)
ENCODED_INJECTIONS = [
    "/echo%2Eecho/x",
    "/echo/echo%2Ex",
    "/echo/%2A",
    "/%2A/echo",
    "/echo/%3E",
    "/%3e/echo",
    "/echo%20/echo",
    "/echo/echo%0D%0APUB%20mesh.x%201",
    "/echo/echo%0A",
    "/echo/echo%00",
    "/%2E%2E/echo/echo",
    "/echo/%2E%2E/echo",
    "/echo/%2F/echo",
    "/echo%2Fecho",
    "/echo%09/echo",
]


ECHO = b'{"id": 1, "name": "a"}'


@pytest.fixture(params=["h11", "httptools"])
async def served(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[tuple[Shop, str]]:
    async with running_shop(nats_url) as shop:
        app = create_app(shop.mesh, limits=LIMITS)
        async with serving(app, limits=LIMITS, http=request.param) as url:
            yield shop, url


async def raw(url: str, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send bytes, then read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(data)
        with anyio.fail_after(wait):
            try:
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return received


async def test_requests_over_a_real_socket(served: tuple[Shop, str]) -> None:
    _, url = served
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/echo/echo", json={"id": 1, "name": "a"})
        assert r.json() == {"id": 1, "name": "a"}
        r = await client.get("/products/3")
        assert r.json()["id"] == 3
        assert (await client.get("/readyz")).status_code == 200
        assert "natsmesh_gateway_requests_total" in (await client.get("/metrics")).text


async def test_percent_encoded_injections_never_reach_nats(served: tuple[Shop, str]) -> None:
    shop, url = served
    async with recording(shop.url) as recorder, httpx.AsyncClient(base_url=url) as client:
        for path in ENCODED_INJECTIONS:
            # httpx would normalise the path: send it byte for byte.
            request = client.build_request("POST", url, content=b"{}")
            request.url = httpx.URL(url + path)
            assert request.url.raw_path.split(b"?")[0] == path.encode()
            r = await client.send(request)
            assert r.status_code in (400, 404), (path, r.status_code, r.text)
            assert r.json()["error"]["code"] == r.status_code
    assert recorder.subjects == []


async def test_a_slow_request_head_gets_408(served: tuple[Shop, str]) -> None:
    _, url = served
    started = time.monotonic()
    answer = await raw(url, b"POST /echo/echo HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"kind":"request_timeout"' in answer
    assert 0.4 < time.monotonic() - started < 3


async def test_a_slow_request_body_gets_408(served: tuple[Shop, str]) -> None:
    _, url = served
    started = time.monotonic()
    head = b"POST /echo/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = await raw(url, head + b"Content-Length: 100\r\n\r\n" + b'{"id": 1, ')
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


async def test_an_idle_connection_is_closed(served: tuple[Shop, str]) -> None:
    _, url = served
    started = time.monotonic()
    answer = await raw(url, b"")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


async def test_large_heads_and_bodies_are_refused(served: tuple[Shop, str]) -> None:
    _, url = served
    many = b"".join(b"X-H%d: v\r\n" % n for n in range(20))
    answer = await raw(url, b"POST /echo/echo HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    huge = b"X-Big: " + b"v" * 5000 + b"\r\n"
    answer = await raw(url, b"POST /echo/echo HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n")
    assert answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 "))  # 400: h11's own bound
    endless = b"POST /echo/echo HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"v" * 100_000
    answer = await raw(url, endless)
    assert answer.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 "))
    chunks = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    head = b"POST /echo/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await raw(url, head + chunks)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()


# -- TCP_NODELAY: without it asyncio's loop makes every keep-alive answer wait ~40 ms ----------


def test_bind_makes_a_tcp_socket_that_asyncio_sets_tcp_nodelay_on() -> None:
    # asyncio sets TCP_NODELAY on accepted sockets only when the listener's proto says TCP.
    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP


async def _server_end_of_keep_alive(url: str) -> tuple[socket.socket, socket.socket]:
    client = await anyio.to_thread.run_sync(lambda: keep_alive(url, "/echo/echo", ECHO))
    return client, server_end([os.getpid()], client)


async def test_every_connection_has_tcp_nodelay_on_asyncios_loop(served: tuple[Shop, str]) -> None:
    # uvloop sets TCP_NODELAY itself, and hid the missing one: these tests run without it.
    assert type(asyncio.get_running_loop()).__module__.startswith("asyncio.")
    _, url = served
    client, server = await _server_end_of_keep_alive(url)
    with client, server:
        assert no_delay(server)


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_listener_made_elsewhere_gets_tcp_nodelay_too(nats_url: str, http: str) -> None:
    # A socket handed to run_server() by its caller (proto 0, as bind() once made it): the
    # gateway's protocol sets TCP_NODELAY on each connection itself.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    assert listener.proto == 0
    async with running_shop(nats_url) as shop:
        app = create_app(shop.mesh, limits=LIMITS)
        async with serving(app, limits=LIMITS, http=http, sock=listener) as url:
            client, server = await _server_end_of_keep_alive(url)
            with client, server:
                assert no_delay(server)


@pytest.mark.parametrize("workers", [1, 2])
async def test_natsmesh_gateway_on_asyncios_loop_sets_tcp_nodelay(
    nats_url: str, workers: int
) -> None:
    port = free_port()
    args = ["-v", "gateway", "--loop", "asyncio", "--port", str(port), "--workers", str(workers)]
    async with running_shop(nats_url) as shop:
        with Proc(*args, nats_url=shop.url) as proc:
            await anyio.to_thread.run_sync(lambda: proc.wait_ready(60))
            # The processes that serve really run asyncio's loop (each worker says so).
            await proc.says("natsmesh.loop: event loop: asyncio", 1)
            if workers > 1:
                lines = await proc.says(": event loop: asyncio", 1 + workers)
                assert not [x for x in lines if "uvloop" in x]
            url = f"http://127.0.0.1:{port}"
            client = await anyio.to_thread.run_sync(lambda: keep_alive(url, "/echo/echo", ECHO))
            with client, server_end([proc.pid, *children(proc.pid)], client) as server:
                assert no_delay(server)
            assert await _stop(proc) == 0


# -- as a user runs it ------------------------------------------------------------------------


async def _get(url: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.get(path)


async def _stop(proc: Proc) -> int:
    return await anyio.to_thread.run_sync(proc.terminate)


@pytest.mark.parametrize("workers", [1, 2])
async def test_natsmesh_gateway_command(nats_url: str, workers: int) -> None:
    port = free_port()
    async with running_shop(nats_url) as shop:
        args = ["gateway", "--port", str(port), "--workers", str(workers)]
        with Proc(*args, nats_url=shop.url) as proc:
            line = await anyio.to_thread.run_sync(lambda: proc.wait_ready(60))
            assert line.startswith(f"natsmesh gateway: http://127.0.0.1:{port}")
            url = f"http://127.0.0.1:{port}"
            for _ in range(4):
                assert (await _get(url, "/products/2")).json()["id"] == 2
            r = await _get(url, "/echo/%2A")
            assert r.status_code in (400, 405)
            assert await _stop(proc) == 0


async def test_natsmesh_up_serves_the_gateway(nats_url: str) -> None:
    port = free_port()
    with Proc("up", "--port", str(port), nats_url=nats_url) as proc:
        line = await anyio.to_thread.run_sync(lambda: proc.wait_ready(60))
        assert f"gateway http://127.0.0.1:{port}" in line
        url = f"http://127.0.0.1:{port}"
        assert (await _get(url, "/products/1")).json()["name"] == "Espresso beans, 1 kg"
        assert (await _get(url, "/readyz")).status_code == 200
        proc.signal(signal.SIGINT)
        assert await anyio.to_thread.run_sync(lambda: proc.popen.wait(30)) == 0


async def test_a_taken_port_is_one_line(nats_url: str) -> None:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        with Proc("gateway", "--port", str(port), nats_url=nats_url) as proc:
            code = await anyio.to_thread.run_sync(lambda: proc.popen.wait(30))
            await anyio.to_thread.run_sync(proc.close)
            assert code == 8  # the documented "cannot listen where told to"
            assert f"port {port} on 127.0.0.1 is taken" in "".join(proc.stderr_lines)
            assert "Traceback" not in "".join(proc.stderr_lines)
    finally:
        sock.close()


# -- an untested uvicorn: its stock protocol, still with TCP_NODELAY ---------------------------


def test_the_installed_uvicorn_gets_the_gateways_protocol() -> None:
    assert _protocol.uvicorn_known()
    assert not _protocol.uvicorn_known("0.56.0")
    assert protocol_class(LIMITS, "h11").__mro__[1] is _protocol.LimitedH11


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_an_untested_uvicorn_runs_its_stock_protocol_with_tcp_nodelay(
    nats_url: str, http: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_protocol, "TESTED_UVICORN", ("0.0.",))
    _protocol._warn_untested.cache_clear()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        stock = protocol_class(LIMITS, http)
    assert "not one the gateway's protocol was tested with" in caplog.text
    assert not issubclass(stock, _protocol.LimitedH11 | _protocol.LimitedHttpTools)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0: asyncio won't
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    async with running_shop(nats_url) as shop:
        app = create_app(shop.mesh, limits=LIMITS)
        async with serving(app, limits=LIMITS, http=http, sock=listener) as url:
            client, server = await _server_end_of_keep_alive(url)
            with client, server:
                assert no_delay(server)
            async with httpx.AsyncClient(base_url=url) as http_client:
                answer = await http_client.post("/echo/echo", content=ECHO)
            assert answer.status_code == 200
