"""The dashboard under the shop's access policy (examples/policy.toml), on a real nats-server.

Every component connects as its own identity with the credentials the compiler
wrote; the dashboard as the read-only ``dashboard`` operator. It shows the shop's
services, edges and metrics, and its tap and recent errors, without a single
permission violation; an identity that is not an operator can read none of it.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from test_auth_isolation import Conn, Secured, connected
from waits import eventually

from examples.shop.catalog import Catalog
from examples.shop.orders import Orders
from examples.shop.pricing import PricingV1
from natsmesh import Mesh, MeshError, ServiceRunner, dashboard
from natsmesh.control._controller import Controller
from natsmesh.security._auth_files import AUTH_CONF, compile_policy
from natsmesh.testing import EmbeddedNats
from natsmesh.transport._flush import flush
from natsmesh.wire import _observe

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
ORDER = {"product_id": 1, "quantity": 1, "customer": "ada"}
BAD_ORDER = {"product_id": 999_999, "quantity": 1, "customer": "ada"}


@pytest.fixture(scope="module")
def shop_policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    out = tmp_path_factory.mktemp("shop-policy")
    compile_policy(ROOT / "examples" / "policy.toml", out)
    server = EmbeddedNats(config_file=out / AUTH_CONF)
    server.start()
    try:
        yield Secured(server.url, out)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def _shop(secured: Secured) -> AsyncIterator[tuple[list[Conn], Mesh]]:
    names = ("controller", "catalog", "pricing", "orders", "gateway")
    async with connected(secured, *names) as conns, contextlib.AsyncExitStack() as stack:
        controller, catalog, pricing, orders, gateway = conns
        await stack.enter_async_context(Controller(controller.nc))
        for target, conn in ((Catalog(), catalog), (PricingV1(), pricing), (Orders(), orders)):
            await stack.enter_async_context(ServiceRunner(target, nats=conn.nc))
        mesh = await stack.enter_async_context(Mesh(gateway.nc, name="gateway", kind="gateway"))
        yield conns, mesh


#: Seconds between rounds of the background load: it paces the load, it waits for nothing.
PACE = 0.02


async def _load(mesh: Mesh) -> None:
    while True:
        for order in (ORDER, ORDER, BAD_ORDER):
            with contextlib.suppress(MeshError):  # the bad order fails: data for the page
                await mesh.call("orders.place", order, timeout=5)
        await anyio.sleep(PACE)


async def _sse(client: httpx.AsyncClient, path: str) -> AsyncIterator[tuple[str, Any]]:
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                yield kind, json.loads(line[6:])


async def test_the_dashboard_shows_the_shop_as_a_read_only_operator(shop_policy: Secured) -> None:
    async with (
        _shop(shop_policy) as (conns, mesh),
        connected(shop_policy, "dashboard") as [ops],
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(_load, mesh)
        sock = dashboard.bind("127.0.0.1", 0)
        url = await tg.start(functools.partial(dashboard.run, ops.nc, sock))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            wanted = {("gateway", "orders"), ("orders", "pricing"), ("orders", "catalog")}
            with anyio.fail_after(30):
                async for _, data in _sse(client, "/api/v1/events"):
                    edges = {(e["source"], e["target"]): e for e in data["topology"]["edges"]}
                    if wanted <= set(edges) and all(edges[e]["rps"] > 0 for e in wanted):
                        break
            services = {s["name"]: s for s in (await client.get("/api/v1/services")).json()}
            for name in ("catalog", "pricing", "orders"):
                assert services[name]["count"] == 1, name
            metrics = (await client.get("/metrics")).text
            assert 'natsmesh_request_total{callee="orders",caller="gateway"' in metrics

            async def orders_failed() -> Any:
                page = (await client.get("/api/v1/services/orders")).json()
                return page["errors"]

            errors = await eventually(orders_failed, within=20)
            assert errors[0]["code"] == 404  # no such product: from orders, by its identity

            with anyio.fail_after(15):
                async for kind, sample in _sse(client, "/api/v1/tap/orders"):
                    if kind == "sample":
                        assert sample["caller"] == "gateway"
                        break
        tg.cancel_scope.cancel()
    # Its grants sufficed for all of it, and nobody else's were exceeded either.
    assert ops.errors == [], "\n".join(ops.errors)
    assert [f"{c.name}: {e}" for c in conns for e in c.errors] == []


async def test_no_other_identity_reads_the_observations(shop_policy: Secured) -> None:
    """Summaries, tap samples and failed requests: only an operator may subscribe."""
    async with (
        _shop(shop_policy) as (_, mesh),
        connected(shop_policy, "dashboard", "gateway", "pricing") as conns,
    ):
        ops, gateway, pricing = conns
        wildcards = [
            _observe.metrics_wildcard("mesh"),
            _observe.tap_wildcard("mesh"),
            _observe.errors_wildcard("mesh"),
        ]
        spies = [await c.nc.subscribe(w) for c in (gateway, pricing) for w in wildcards]
        spies += [await pricing.nc.subscribe(_observe.errors_subject("mesh", "orders", "*"))]
        reads = [await ops.nc.subscribe(w) for w in wildcards]
        for conn in (gateway, pricing):
            await flush(conn.nc)
            for subject in wildcards:
                await conn.denied("subscription", subject)
        # Nor may they switch a tap on, or ask for reports.
        await gateway.nc.publish(_observe.tap_interest("mesh", "orders"), b"")
        await pricing.nc.publish(_observe.metrics_interest("mesh"), b"")
        await gateway.nc.flush()
        await pricing.nc.flush()
        await gateway.denied("publish", _observe.tap_interest("mesh", "orders"))
        await pricing.denied("publish", _observe.metrics_interest("mesh"))

        # Real observations flow (the operator asks): the operator reads each kind ...
        with contextlib.suppress(MeshError):
            await mesh.call("orders.place", BAD_ORDER, timeout=5)
        await mesh.call("orders.place", ORDER, timeout=5)
        await ops.nc.publish(_observe.metrics_interest("mesh"), b"")
        for sub in reads[::2]:  # summaries and failed requests
            assert (await sub.next_msg(timeout=5)).data

        async def sampled() -> bool:
            # The tap is on while asked, and sends what it sampled when asked again.
            await ops.nc.publish(_observe.tap_interest("mesh", "orders"), b"")
            await mesh.call("orders.place", ORDER, timeout=5)
            await ops.nc.flush()
            return reads[1].pending_msgs > 0

        await eventually(sampled, within=10)
        # ... and none of it reached the others (it would be queued before their PONG).
        await gateway.nc.flush()
        await pricing.nc.flush()
        assert [s.pending_msgs for s in spies] == [0] * len(spies)


async def test_a_client_reports_under_its_identity_whatever_it_calls_itself(
    shop_policy: Secured,
) -> None:
    """The grants allow summaries only under the connection's identity: a client named
    otherwise still reports, under its identity, and the server refuses nothing."""
    async with (
        _shop(shop_policy) as _,
        connected(shop_policy, "dashboard", "gateway") as (ops, gateway),
        Mesh(gateway.nc, name="front-door", kind="gateway") as mesh,
    ):
        reads = await ops.nc.subscribe(_observe.metrics_wildcard("mesh"))
        await mesh.call("orders.place", ORDER, timeout=5)
        await ops.nc.publish(_observe.metrics_interest("mesh"), b"")
        msg = await reads.next_msg(timeout=5)
        while msg.subject.split(".")[-2] != "gateway" or not msg.data:
            msg = await reads.next_msg(timeout=5)
        await flush(gateway.nc)
        assert not [e for e in gateway.errors if "violation" in e.lower()], gateway.errors
