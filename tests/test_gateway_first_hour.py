"""What a browser and a first curl meet at the gateway: the index, the icon, a trailing
slash, limits that name themselves, and logs of one line for a service's failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from gateway_env import TEST_ROUTES, Shop, running_shop
from waits import eventually

import gateway._app
from natsmesh import ServiceRunner, endpoint, service

pytestmark = pytest.mark.anyio


@pytest.fixture
async def shop(nats_url: str) -> AsyncIterator[Shop]:
    async with running_shop(nats_url) as running:
        yield running


@pytest.fixture
async def client(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=shop.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


async def test_browsers_get_no_error_for_the_icon(client: httpx.AsyncClient) -> None:
    for method in ("GET", "HEAD"):
        r = await client.request(method, "/favicon.ico")
        assert r.status_code == 204
        assert r.content == b""
        assert "content-length" not in r.headers
        assert "max-age" in r.headers["cache-control"]
    docs = await client.get("/docs")
    assert b'<link rel="icon" href="data:,">' in docs.content  # asks for none at all


async def test_the_root_links_to_the_docs(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.json()["docs"] == "/docs"
    assert r.json()["openapi"] == "/openapi.json"
    assert (await client.post("/", json={})).status_code == 404


async def test_a_route_of_the_table_comes_before_the_index(nats_url: str) -> None:
    routes = TEST_ROUTES + '\n[[http]]\nmethod = "GET"\npath = "/"\ntarget = "hdrs.show"\n'
    async with running_shop(nats_url, routes=routes) as shop:
        transport = httpx.ASGITransport(app=shop.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            r = await client.get("/")
            assert r.status_code == 200
            assert "headers" in r.json()


async def test_a_trailing_slash_is_the_same_path(client: httpx.AsyncClient) -> None:
    plain = await client.get("/products/1")
    slashed = await client.get("/products/1/")
    assert (slashed.status_code, slashed.json()) == (plain.status_code, plain.json())
    assert (await client.post("/echo/echo/", json={"id": 1, "name": "a"})).json()["id"] == 1
    assert (await client.get("/docs/")).status_code == 200
    # One trailing slash, not any number of empty segments.
    doubled = await client.get("/products/1//")
    assert doubled.status_code == 400
    assert doubled.json()["error"]["kind"] == "bad_path"


async def test_limits_say_which_and_how_much(client: httpx.AsyncClient) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    r = await client.post("/echo/echo", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert (
        "nested deeper than the JSON parser's limit of 200 levels" in r.json()["error"]["message"]
    )

    # Under the body limit (256 KiB), over the services' string limit.
    long = {"id": 1, "name": "x" * 200_000}
    r = await client.post("/echo/echo", json=long)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "a string is longer than the limit of 100000 characters"


async def test_a_service_failure_is_one_line_and_a_gateway_bug_keeps_its_stack(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="natsmesh.gateway")
    # echo.slow's budget is the route's 0.3 s: a 504 is expected and not logged at all.
    r = await client.get("/slow", params={"seconds": "1"})
    assert r.status_code == 504
    assert [rec for rec in caplog.records if rec.name == "natsmesh.gateway"] == []

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the gateway")

    monkeypatch.setattr(gateway._app, "payload_of", broken)
    r = await client.post("/echo/echo", json={"id": 1, "name": "a"})
    assert r.status_code == 500
    assert "a bug" not in r.text
    [record] = [rec for rec in caplog.records if rec.name == "natsmesh.gateway"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


async def test_the_index_and_the_icon_are_open_with_auth_on(nats_url: str) -> None:
    from gateway import GatewayAuth, create_app
    from natsmesh import Mesh

    auth = GatewayAuth.parse(
        '[api_keys.ops]\nsha256 = "' + "5e" * 32 + '"\n'
        '[[rules]]\ntargets = ["echo.*"]\nallow = ["key:ops"]\n'
    )
    async with Mesh(nats_url, name="gw", kind="gateway") as mesh:
        app = create_app(mesh, auth=auth)
        await app.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                assert (await client.get("/favicon.ico")).status_code == 204
                index = await client.get("/")
                assert index.status_code == 200
                assert json.loads(index.content)["docs"] == "/docs"
                assert (await client.get("/docs")).status_code == 401
        finally:
            await app.stop()


@service("boom", version="1.0.0", description="a handler with a bug")
class Boom:
    @endpoint
    async def now(self) -> None:
        raise RuntimeError("a bug in the service")


async def test_a_service_500_is_one_gateway_line_naming_the_services_trace(
    shop: Shop, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="natsmesh")
    async with ServiceRunner(Boom(), nats=shop.url):
        await eventually(lambda: shop.app.directory.find("boom", "now"))
        caplog.clear()
        r = await client.post("/boom/now", json={})
    assert (r.status_code, r.json()["error"]["kind"]) == (500, "internal")
    [line] = [rec for rec in caplog.records if rec.name == "natsmesh.gateway"]
    assert line.exc_info is None
    assert line.levelno == logging.WARNING
    message = line.getMessage()
    assert message.startswith("POST boom.now: 500 internal from the service (trace ")
    # The service logged its own stack once, under the same trace id.
    [service_line] = [
        rec
        for rec in caplog.records
        if rec.name == "natsmesh.service" and rec.levelno >= logging.WARNING
    ]
    assert service_line.exc_info is not None
    trace = message.rsplit("trace ", 1)[1].rstrip(")")
    assert len(trace) == 32
    assert f"(trace {trace})" in service_line.getMessage()
