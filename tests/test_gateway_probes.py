"""The gateway's probes and limits under faults (issue 14, defects 2 and 3).

- ``/readyz`` must mean "NATS answers now": with the server frozen (SIGSTOP) the
  connection still looks open, and a ready gateway keeps taking traffic it can only
  time out on.
- The probes are requests like any other: 10,000 header fields are a 431 there too.
- A chunked body past the limit gets its 413, read by a client that is still
  uploading, instead of a connection reset that loses the answer.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import signal
import time
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import httpx
import pytest
from gateway_env import Shop, asgi, running_shop, serving
from waits import eventually, freeze

from gateway import GatewayLimits, create_app
from gateway._protocol import LINGER
from natsmesh.testing import EmbeddedNats

pytestmark = pytest.mark.anyio

MANY = [(b"x-h%d" % n, b"v") for n in range(10_000)]


@pytest.fixture
async def shop(nats_url: str) -> AsyncIterator[Shop]:
    async with running_shop(nats_url) as shop:
        yield shop


@pytest.mark.parametrize("page", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
async def test_ten_thousand_headers_are_431_on_the_pages_too(shop: Shop, page: str) -> None:
    r = await asgi(shop.app, "GET", page, headers=MANY)
    assert r.status == 431
    assert r.json()["error"]["kind"] == "headers_too_large"
    assert r.headers["connection"] == "close"
    assert (await asgi(shop.app, "GET", page)).status == 200


async def test_readyz_is_503_while_the_nats_server_is_frozen(
    nats_server: EmbeddedNats, shop: Shop
) -> None:
    assert (await asgi(shop.app, "GET", "/readyz")).status == 200
    await freeze(nats_server.pid)
    try:
        with anyio.fail_after(10):  # did not hang: the probe has a deadline of its own
            r = await asgi(shop.app, "GET", "/readyz")
        assert r.status == 503
        assert r.json()["status"] == "not ready"
        assert shop.mesh.nats.is_connected  # what the old probe looked at
    finally:
        os.kill(nats_server.pid, signal.SIGCONT)

    async def ready_again() -> bool:
        return (await asgi(shop.app, "GET", "/readyz")).status == 200

    await eventually(ready_again)


# -- over a real socket ---------------------------------------------------------------------


@pytest.fixture(params=["h11", "httptools"])
async def served(request: pytest.FixtureRequest, shop: Shop) -> AsyncIterator[str]:
    limits = GatewayLimits()  # the defaults: a 256 KiB body
    app = create_app(shop.mesh, limits=limits)
    async with serving(app, limits=limits, http=request.param) as url:
        yield url


def _upload(url: str, size: int, *, chunked: bool) -> tuple[int, bytes]:
    """A plain client (Python's http.client): send the whole body, then read the answer.

    Like urllib and requests, it gives up on a write error and never reads the answer:
    a server that resets the connection mid-upload leaves it with BrokenPipeError.
    """
    chunk = b"x" * 64 * 1024
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        headers = {} if chunked else {"Content-Length": str(size)}
        body = (chunk for _ in range(size // len(chunk)))
        conn.request("POST", "/echo/echo", body=body, headers=headers, encode_chunked=chunked)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("size", [1, 8, 32], ids=lambda n: f"{n}MiB")
async def test_a_chunked_body_past_the_limit_is_answered_413_not_reset(
    served: str, size: int
) -> None:
    status, body = await anyio.to_thread.run_sync(
        functools.partial(_upload, served, size * 1024 * 1024, chunked=True)
    )
    assert status == 413
    assert b'"kind":"too_large"' in body


async def test_a_large_announced_body_is_answered_413_not_reset(served: str) -> None:
    status, _ = await anyio.to_thread.run_sync(
        functools.partial(_upload, served, 8 * 1024 * 1024, chunked=False)
    )
    assert status == 413


async def test_an_endless_upload_is_cut_after_the_linger(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    head = b"POST /echo/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 64 * 1024
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    started = time.monotonic()
    with anyio.fail_after(30):  # did not hang: the server ends it after LINGER seconds
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(head)
            with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                while True:
                    await stream.send(frame)
    assert time.monotonic() - started >= LINGER / 2  # it did drain for a while


async def test_the_connection_still_serves_after_a_small_413(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as client:
        r = await client.post("/echo/echo", content=b"x" * (300 * 1024))
        assert r.status_code == 413
        r = await client.post("/echo/echo", json={"id": 1, "name": "a"})
        assert r.json() == {"id": 1, "name": "a"}
