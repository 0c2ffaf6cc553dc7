"""The gateway's ASGI app in-process (httpx's ASGI transport and raw ASGI calls) against a
real nats-server, a controller and real services: mapping, statuses, headers, limits, pages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
import pytest
from gateway_env import Answer, Shop, asgi, in_lifespan, recording, running_shop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waits import eventually

from gateway import GatewayLimits, create_app
from natsmesh import Mesh, ServiceRunner, endpoint, service

pytestmark = pytest.mark.anyio

TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
async def shop(nats_url: str) -> AsyncIterator[Shop]:
    async with running_shop(nats_url) as running:
        yield running


@pytest.fixture
async def client(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=shop.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def error(response: httpx.Response | Answer) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    found: dict[str, object] = body["error"]
    assert found["code"] == response.status_code if isinstance(response, httpx.Response) else True
    return found


# -- mapping ------------------------------------------------------------------------------


async def test_default_route_calls_any_service_with_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/echo/echo", json={"id": 1, "name": "a"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"id": 1, "name": "a"}
    r = await client.post("/pricing/quote", json={"product_id": 1, "quantity": 2})
    assert r.json()["total_cents"] == 4800


async def test_table_routes_merge_path_and_query_parameters(client: httpx.AsyncClient) -> None:
    r = await client.get("/products/2")  # "2" becomes 2: the request schema says integer
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Burr grinder"
    r = await client.get("/products", params={"max_price_cents": "1000", "in_stock": "true"})
    assert [p["id"] for p in r.json()["products"]] == [4]
    r = await client.post("/quotes", json={"product_id": 3, "quantity": 1})
    assert r.json()["unit_price_cents"] == 3500
    # PUT /items/{id} → echo.echo: the body, with the path's id merged in (and winning)
    r = await client.put("/items/7", json={"id": 1, "name": "n"})
    assert r.json() == {"id": 7, "name": "n"}
    placed = await client.post("/orders", json={"product_id": 1, "quantity": 1, "customer": "ada"})
    assert placed.status_code == 200
    order = placed.json()["id"]
    r = await client.get(f"/orders/{order}")
    assert r.json()["customer"] == "ada"


async def test_default_route_stays_open_beside_a_table_route(client: httpx.AsyncClient) -> None:
    # GET /orders/{id} is the table's; POST /orders/get is the default route's
    r = await client.post("/orders/get", json={"id": "nope"})
    assert r.status_code == 404
    assert error(r)["kind"] == "service"
    r = await client.request("PATCH", "/orders/get")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


# -- statuses -----------------------------------------------------------------------------


async def test_validation_is_422_with_field_paths_and_no_input(client: httpx.AsyncClient) -> None:
    r = await client.post("/orders/place", json={"product_id": "EVIL<script>", "quantity": 0})
    assert r.status_code == 422
    found = error(r)
    assert found["kind"] == "validation"
    locs = [d["loc"] for d in found["details"]]  # type: ignore[attr-defined]
    assert ["product_id"] in locs
    assert ["quantity"] in locs
    assert ["customer"] in locs
    assert "EVIL" not in r.text


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "malformed"),
        (b'{"a": NaN}', {}, 400, "malformed"),
        (b"[" * 5000, {}, 413, "too_large"),
        (b"[" * 5000 + b"]" * 5000, {}, 413, "too_large"),
        (b'{"id": 1' + b"0" * 30 + b', "name": "x"}', {}, 400, "malformed"),
        (
            b"id=1",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (b"{}", {"x-request-timeout-ms": "soon"}, 400, "malformed"),
        (b"{}", {"x-request-timeout-ms": "0"}, 400, "malformed"),
        (b"{}", {"content-length": "2", "x-canary": "x" * 2000}, 431, "headers_too_large"),
    ],
)
async def test_bad_requests(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str], status: int, kind: str
) -> None:
    r = await client.post("/echo/echo", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert error(r)["kind"] == kind
    assert "Traceback" not in r.text


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    for path in ("/nobody/here", "/echo/nothing", "/a/b/c", "/"):
        r = await client.post(path, json={})
        assert r.status_code == 404, path
        assert error(r)["kind"] == "unknown_route"
    r = await client.get("/echo/echo")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    r = await client.delete("/products")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    # a non-object body cannot take parameters
    r = await client.put("/items/1", json=[1, 2])
    assert r.status_code == 400


async def test_remote_error_codes_become_statuses(client: httpx.AsyncClient) -> None:
    r = await client.get("/products/99")
    assert r.status_code == 404
    assert error(r) == {"code": 404, "kind": "service", "message": "no product 99"}
    r = await client.post("/orders", json={"product_id": 5, "quantity": 1, "customer": "c"})
    assert r.status_code == 409
    assert "in stock" in str(error(r)["message"])


async def test_deadlines_are_504_and_a_client_budget_is_capped(
    client: httpx.AsyncClient,
) -> None:
    started = time.monotonic()
    r = await client.post(
        "/echo/slow", json={"seconds": 5}, headers={"x-request-timeout-ms": "200"}
    )
    assert r.status_code == 504
    assert error(r)["kind"] == "deadline"
    assert time.monotonic() - started < 1.5
    # The route caps the budget at 0.3 s, whatever the client asks for.
    started = time.monotonic()
    r = await client.get(
        "/slow", params={"seconds": "3"}, headers={"x-request-timeout-ms": "60000"}
    )
    assert r.status_code == 504
    assert time.monotonic() - started < 1.5
    r = await client.get("/slow", params={"seconds": "0"}, headers={"x-request-timeout-ms": "100"})
    assert r.status_code == 200
    assert 0 < r.json()["remaining"] <= 0.1


async def test_no_responders_is_503_at_once(shop: Shop, client: httpx.AsyncClient) -> None:
    @service("gone", version="1.0.0")
    class Gone:
        @endpoint
        async def ping(self) -> str:
            return "pong"

    async with ServiceRunner(Gone, nats=shop.url):
        r = await client.post("/gone/ping")
        assert r.json() == "pong"
    started = time.monotonic()
    r = await client.post("/gone/ping")  # known to the gateway, no instance left
    assert r.status_code == 503
    assert error(r)["kind"] == "no_responders"
    r = await client.get("/ghost/1")  # a route to a service that never ran
    assert r.status_code == 503
    assert time.monotonic() - started < 1.0


async def test_overloaded_service_is_503_with_retry_after(
    shop: Shop, client: httpx.AsyncClient
) -> None:
    async with anyio.create_task_group() as tg:
        held: list[httpx.Response] = []

        async def hold() -> None:
            held.append(await client.post("/busy/hold"))

        tg.start_soon(hold)
        await shop.busy.entered.wait()
        r = await client.post("/busy/hold")  # max_concurrency=1: shed, retried, shed
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert error(r)["kind"] == "overloaded"
        shop.busy.release.set()
    assert held[0].json() == {"held": True}


async def test_the_gateway_sheds_beyond_its_concurrency_with_a_fast_503(shop: Shop) -> None:
    app = create_app(shop.mesh, limits=GatewayLimits(max_concurrency=1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(asgi, app, "POST", "/busy/hold")
        await shop.busy.entered.wait()
        started = time.monotonic()
        r = await asgi(app, "POST", "/echo/echo", body=b'{"id": 1, "name": "x"}')
        assert r.status == 503
        assert r.headers["retry-after"] == "1"
        assert time.monotonic() - started < 0.1
        shop.busy.release.set()


# -- headers ------------------------------------------------------------------------------


async def test_clients_cannot_spoof_mesh_headers(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/headers",
        headers={
            "Mesh-Caller": "admin",
            "Mesh-Budget-Ms": "99999999",
            "Mesh-Attempt": "7",
            "Mesh-Retrying": "1",
            "Nats-Msg-Id": "dup",
            "Nats-Expected-Stream": "x",
            "x-secret": "not forwarded",
            "x-request-id": "req-1",
            "x-canary": "always",
        },
    )
    assert r.status_code == 200, r.text
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert seen["mesh-caller"] == "gateway-test"
    assert int(seen["mesh-budget-ms"]) <= 5000
    assert "mesh-attempt" not in seen
    assert "mesh-retrying" not in seen
    assert not [k for k in seen if k.startswith("nats-")]
    assert "x-secret" not in seen
    assert seen["x-request-id"] == "req-1"
    assert seen["x-canary"] == "always"


async def test_traceparent_is_propagated_or_started(client: httpx.AsyncClient) -> None:
    r = await client.get("/headers", headers={"traceparent": TRACE})
    assert r.json()["trace"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = r.json()["headers"]["traceparent"]
    assert sent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert sent != TRACE  # the gateway's own span, a child of the client's
    for header in ({}, {"traceparent": "garbage"}):
        r = await client.get("/headers", headers=header)
        trace = r.json()["trace"]
        assert len(trace) == 32
        assert trace != "0" * 32


async def test_forwarding_a_mesh_header_is_refused(shop: Shop) -> None:
    for name in ("Mesh-Caller", "nats-msg-id", "traceparent", "Content-Type", "bad name"):
        with pytest.raises(ValueError, match="header"):
            create_app(shop.mesh, forward_headers=(name,))


async def test_too_many_headers_is_431(shop: Shop) -> None:
    app = create_app(shop.mesh, limits=GatewayLimits(max_headers=8))
    headers = [(f"x-h{n}".encode(), b"v") for n in range(9)]
    r = await asgi(app, "POST", "/echo/echo", body=b"{}", headers=headers)
    assert r.status == 431
    assert r.headers["connection"] == "close"


# -- limits -------------------------------------------------------------------------------


async def test_an_announced_large_body_is_refused_without_reading_it(shop: Shop) -> None:
    app = create_app(shop.mesh, limits=GatewayLimits(max_body=1000))
    r = await asgi(
        app, "POST", "/echo/echo", body=b"x" * 5000, headers=[(b"content-length", b"5000")]
    )
    assert r.status == 413
    assert error(r)["kind"] == "too_large"
    assert r.received == 0  # type: ignore[attr-defined]
    assert r.headers["connection"] == "close"


async def test_a_chunked_body_is_cut_at_the_limit(shop: Shop) -> None:
    app = create_app(shop.mesh, limits=GatewayLimits(max_body=1000))
    r = await asgi(app, "POST", "/echo/echo", body=[b"x" * 400] * 100)
    assert r.status == 413
    assert r.received == 3  # type: ignore[attr-defined]


async def test_the_body_limit_stays_below_the_nats_max_payload(shop: Shop) -> None:
    max_payload = shop.mesh.nats.max_payload
    app = create_app(shop.mesh, limits=GatewayLimits(max_body=10 * max_payload))
    limit = app._limit()
    assert limit < max_payload / 2
    # The worst JSON for msgpack (a float takes 4 bytes as text, 9 as msgpack) still fits.
    # (In lists of 40,000: a service refuses longer arrays, whatever their size.)
    count = limit // 4 - 10
    rows = [
        b"[" + b",".join([b"1.5"] * min(40_000, count - n)) + b"]" for n in range(0, count, 40_000)
    ]
    floats = b"[" + b",".join(rows) + b"]"
    assert limit - 50 <= len(floats) <= limit
    r = await asgi(app, "POST", "/echo/echo", body=floats)
    assert r.status == 422  # the service got it and refused it: not a 500, not a 413
    r = await asgi(app, "POST", "/echo/echo", body=floats + b" " * (limit - len(floats) + 1))
    assert r.status == 413


# -- injection ----------------------------------------------------------------------------

INJECTIONS = [
    "/echo.echo/x",
    "/echo/echo.x",
    "/echo/*",
    "/*/echo",
    "/echo/>",
    "/>/echo",
    "/echo /echo",
    "/echo/ech o",
    "/echo/echo\r\nPUB mesh.x 1",
    "/echo/\necho",
    "/echo/echo\x00",
    "/../echo/echo",
    "/echo/../echo",
    "/echo//echo",
    "/echo/echo//",
    "//echo/echo",
    "/" + "e" * 65 + "/echo",
    "/_ctl/status",  # a valid token, but never a service name: no subject is built
    "/ghost/a.b",
    "/ghost/*",
    "/products/>",
    "/orders/a b",
]


async def test_no_injection_reaches_nats(shop: Shop) -> None:
    async with recording(shop.url) as recorder:
        for path in INJECTIONS:
            for method in ("GET", "POST"):
                r = await asgi(shop.app, method, path, body=b"{}")
                assert 400 <= r.status < 500, (path, r.status)
                assert r.json()["error"]["code"] == r.status
    assert recorder.subjects == []


async def test_any_path_is_4xx_or_a_subject_of_allowed_tokens(shop: Shop) -> None:
    """The property, end to end: what reaches NATS is built of allow-listed tokens only."""
    chars = st.sampled_from(list("/.*> \r\n\x00-_aeZ9%$"))
    paths = st.one_of(
        st.text(max_size=30),
        st.lists(chars, max_size=24).map("".join),
        st.sampled_from(["/echo/echo", "/products/1", "/catalog/get", "/headers"]),
    )
    answers: list[int] = []

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(path=paths, method=st.sampled_from(["GET", "POST"]))
    def check(path: str, method: str) -> None:
        r = anyio.from_thread.run(asgi, shop.app, method, path)
        answers.append(r.status)
        assert r.status < 500 or r.status == 503, (path, r.status)

    async with recording(shop.url) as recorder:
        await anyio.to_thread.run_sync(check)
    for subject in recorder.subjects:
        assert all(TOKEN.fullmatch(t) for t in subject.split(".")), subject
    assert any(400 <= s < 500 for s in answers)


# -- the gateway's own pages ---------------------------------------------------------------


async def test_health_readiness_and_metrics(shop: Shop, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    assert (await client.post("/healthz")).status_code == 405
    await client.get("/products/1")
    await client.get("/products/99")
    await client.post("/catalog/get", json={"id": 2})
    await client.post("/nobody/here")
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'natsmesh_gateway_requests_total{endpoint="get",service="catalog",status="200"} 2.0' in text
    )
    assert (
        'natsmesh_gateway_requests_total{endpoint="get",service="catalog",status="404"} 1.0' in text
    )
    assert 'natsmesh_gateway_requests_total{endpoint="",service="",status="404"} 1.0' in text
    bucket = 'natsmesh_gateway_request_duration_seconds_bucket{endpoint="get",le="+Inf"'
    assert f'{bucket},service="catalog"}} 3.0' in text
    assert "natsmesh_gateway_in_flight 0.0" in text
    assert 'natsmesh_client_requests_total{service="catalog"}' in text
    for name in ("retries", "hedges", "ejections"):
        assert f"natsmesh_client_{name}_total" in text


async def test_not_ready_without_a_connection(nats_url: str) -> None:
    app = create_app(Mesh(nats_url))  # never entered
    r = await asgi(app, "GET", "/readyz")
    assert r.status == 503
    assert (await asgi(app, "GET", "/healthz")).status == 200


async def test_docs_page_works_offline(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert "http://" not in r.text
    assert "https://" not in r.text
    assert "openapi.json" in r.text
    assert (await client.head("/docs")).content == b""


async def test_openapi_is_served_live(shop: Shop, client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0"
    assert {"/products/{id}", "/catalog/get", "/echo/echo", "/orders/place"} <= set(spec["paths"])

    @service("late", version="1.0.0")
    class Late:
        @endpoint
        async def hello(self) -> str:
            return "hi"

    async with ServiceRunner(Late, nats=shop.url):
        # Found by name through $SRV.INFO; discovery is eventually consistent, so a
        # first miss on a loaded machine is asked again on the next request.
        async def found() -> Any:
            reply = await client.post("/late/hello")
            return reply if reply.status_code != 404 else None

        reply = await eventually(found)
        assert reply.json() == "hi"
        shop.app.directory.scan_ttl = 0  # do not wait for the next scan
        spec = (await client.get("/openapi.json")).json()
        assert "/late/hello" in spec["paths"]


# -- ASGI lifespan ------------------------------------------------------------------------


async def test_lifespan_connects_and_closes_an_owned_mesh(nats_url: str) -> None:
    mesh = Mesh(nats_url, name="owned", kind="gateway")
    app = create_app(mesh, owns_mesh=True)
    async with in_lifespan(app) as lifespan:
        assert mesh.ready
        assert (await asgi(app, "GET", "/readyz")).status == 200
        await lifespan.shutdown()
    assert not mesh.ready


async def test_a_cancelled_lifespan_still_closes_an_owned_mesh(nats_url: str) -> None:
    """A server that cancels the lifespan task (no shutdown message) leaves nothing open."""
    mesh = Mesh(nats_url, name="owned", kind="gateway")
    app = create_app(mesh, owns_mesh=True)
    async with in_lifespan(app) as lifespan:
        assert mesh.ready
        nc = mesh.nats
        lifespan.cancel()
    assert not mesh.ready
    assert nc.is_closed


async def test_websockets_are_closed(shop: Shop) -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, str]:
        return {"type": "websocket.connect"}

    await shop.app({"type": "websocket", "path": "/"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1003}]
    assert json.dumps(sent)
