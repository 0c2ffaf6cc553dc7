"""A nested failure's cause reaches the caller, the gateway and the logs, once and bounded;
instances that publish different schemas are flagged by the registry, ``ls`` and ``status``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgpack
import nats
import pydantic
import pytest
from gateway_env import asgi
from test_cli import run
from waits import eventually, leading

from examples.shop.catalog import Catalog
from examples.shop.orders import Orders
from gateway import create_app
from natsmesh import (
    Cause,
    Context,
    Mesh,
    RemoteError,
    ServiceRunner,
    endpoint,
    service,
)
from natsmesh.control._controller import Controller
from natsmesh.transport._flush import flush
from natsmesh.wire._errors import MAX_CAUSE_MESSAGE, MAX_CAUSES, parse_causes

pytestmark = pytest.mark.anyio

ORDER = {"product_id": 1, "quantity": 2, "customer": "ada"}


class QuoteRequest(pydantic.BaseModel):
    product_id: int
    quantity: int = 1


class Quote(pydantic.BaseModel):
    total_cents: int


# The README's own example, served verbatim: a pricing 2.0.0 whose Quote is not the shop's.
@service("pricing", version="2.0.0", description="prices products")
class ReadmePricing:
    @endpoint(idempotent=True)
    async def quote(self, req: QuoteRequest, ctx: Context) -> Quote:
        product = await ctx.mesh.call("catalog.get", {"id": req.product_id})
        return Quote(total_cents=product["price_cents"] * req.quantity)


@service("checkout", version="1.0.0", description="a caller of orders")
class Checkout:
    @endpoint
    async def buy(self, ctx: Context) -> dict[str, Any]:
        result: dict[str, Any] = await ctx.mesh.call("orders.place", ORDER)
        return result


async def test_a_nested_failure_reaches_the_caller_with_its_causes(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="natsmesh")
    async with (
        ServiceRunner(Catalog(), nats=nats_url),
        ServiceRunner(ReadmePricing(), nats=nats_url),
        ServiceRunner(Orders(), nats=nats_url),
        ServiceRunner(Checkout(), nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        with pytest.raises(RemoteError) as direct:
            await mesh.call("orders.place", ORDER)
        assert (direct.value.code, direct.value.kind) == (502, "upstream")
        [cause] = direct.value.causes
        assert (cause.service, cause.endpoint, cause.kind, cause.code) == (
            "pricing",
            "quote",
            "invalid_reply",
            502,
        )
        assert "unit_price_cents" in cause.message or "product_id" in cause.message
        assert "caused by pricing.quote: 502 invalid_reply: invalid reply" in str(direct.value)

        caplog.clear()
        with pytest.raises(RemoteError) as nested:
            await mesh.call("checkout.buy")
        assert [(c.service, c.kind) for c in nested.value.causes] == [
            ("orders", "upstream"),
            ("pricing", "invalid_reply"),
        ]
        assert nested.value.trace_id is not None
        text = str(nested.value)
        assert "\n" not in text
        assert text.startswith("502 call to orders.place failed (caused by orders.place: 502")
        # Logged once, where it began (orders), under the trace the reply names; the hops
        # above relay it without a line, and nobody logs a stack for it.
        failed = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in failed]
        assert failed[0].getMessage().startswith("orders.place: call to pricing.quote failed")
        assert nested.value.trace_id in failed[0].getMessage()
        assert failed[0].exc_info is None


async def test_the_gateway_answers_the_causes_and_logs_one_line(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="natsmesh")
    async with (
        ServiceRunner(Catalog(), nats=nats_url),
        ServiceRunner(ReadmePricing(), nats=nats_url),
        ServiceRunner(Orders(), nats=nats_url),
        Mesh(nats_url, name="gateway", kind="gateway") as mesh,
    ):
        app = create_app(mesh)
        await app.start()
        try:
            caplog.clear()
            answer = await asgi(
                app,
                "POST",
                "/orders/place",
                body=json.dumps(ORDER).encode(),
                headers=[(b"content-type", b"application/json")],
            )
        finally:
            await app.stop()
    assert answer.status == 502
    error = answer.json()["error"]
    assert (error["kind"], error["message"]) == ("upstream", "call to pricing.quote failed")
    [cause] = error["causes"]
    assert set(cause) == {"service", "endpoint", "kind", "code", "message"}
    assert (cause["service"], cause["kind"]) == ("pricing", "invalid_reply")
    gateway_lines = [r for r in caplog.records if r.name == "natsmesh.gateway"]
    assert len(gateway_lines) == 1, [r.getMessage() for r in gateway_lines]
    line = gateway_lines[0]
    assert line.exc_info is None
    assert line.getMessage().startswith("POST orders.place: 502 upstream from the service (trace ")


def test_causes_from_the_wire_are_bounded_and_checked() -> None:
    good = {"service": "a", "endpoint": "b", "kind": "upstream", "code": 502, "message": "x"}
    hostile: list[Any] = [
        {**good, "message": "m" * 100_000},
        {**good, "service": "a.b.>"},
        {**good, "code": True},
        {**good, "code": 99_999},
        {**good, "kind": "Not A Kind"},
        {**good, "message": "line\r\nInjected: 1\x00"},
        "text",
        [good],
        {**good, "extra": "x" * 10},
        *[good] * 100,
        {**good, "service": "root"},
    ]
    causes = parse_causes(hostile)
    assert len(causes) == MAX_CAUSES
    assert causes[0].message == "m" * (MAX_CAUSE_MESSAGE - 3) + "..."
    assert causes[1].message == "line  Injected: 1 "
    assert causes[-1].service == "root"  # the root cause survives the cut
    assert all(isinstance(c, Cause) for c in causes)
    assert parse_causes("not a list") == ()
    assert parse_causes([{"service": "a"}]) == ()


async def test_a_hostile_error_reply_cannot_bloat_the_chain(nats_url: str) -> None:
    # Whatever a service puts in its error body, what reaches its callers is bounded:
    # a caller reads at most MAX_CAUSES causes of MAX_CAUSE_MESSAGE characters.
    nc = await nats.connect(nats_url)
    causes = [
        {"service": "deep", "endpoint": "x", "kind": "upstream", "code": 502, "message": "y" * 900}
        for _ in range(600)
    ]

    async def hostile(msg: Any) -> None:
        body = msgpack.packb({"error": {"code": 502, "causes": causes}})
        await nc.publish(
            msg.reply,
            body,
            headers={
                "Nats-Service-Error": "upstream failed",
                "Nats-Service-Error-Code": "502",
                "Mesh-Error-Kind": "upstream",
            },
        )

    async def small(msg: Any) -> None:
        body = msgpack.packb({"error": {"causes": causes[:20]}})
        await nc.publish(
            msg.reply,
            body,
            headers={"Nats-Service-Error-Code": "502", "Mesh-Error-Kind": "upstream"},
        )

    await nc.subscribe("mesh.hostile.big", cb=hostile)
    await nc.subscribe("mesh.hostile.small", cb=small)
    await flush(nc)

    @service("relay", version="1.0.0")
    class Relay:
        @endpoint
        async def via(self, ctx: Context) -> None:
            await ctx.mesh.call("hostile.small")

    try:
        async with ServiceRunner(Relay(), nats=nats_url), Mesh(nats_url, tables=False) as mesh:
            with pytest.raises(RemoteError) as big:
                await mesh.call("hostile.big")
            assert big.value.causes == ()  # a body larger than 64 KiB is not read
            with pytest.raises(RemoteError) as small_reply:
                await mesh.call("hostile.small")
            assert len(small_reply.value.causes) == MAX_CAUSES
            assert all(len(c.message) <= MAX_CAUSE_MESSAGE for c in small_reply.value.causes)
            with pytest.raises(RemoteError) as relayed:
                await mesh.call("relay.via")
            chain = relayed.value.causes
            assert len(chain) == MAX_CAUSES
            assert chain[0].service == "hostile"
            assert len(str(relayed.value)) < MAX_CAUSES * (MAX_CAUSE_MESSAGE + 80)
    finally:
        await nc.close()


async def test_instances_that_publish_different_schemas_are_flagged(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from examples.shop.pricing import PricingV1, PricingV2

    caplog.set_level(logging.INFO, logger="natsmesh.controller")
    async with Controller(nats_url, lease=1.0) as controller:
        await leading(controller)
        async with (
            ServiceRunner(Catalog(), nats=nats_url),
            ServiceRunner(PricingV1(), nats=nats_url),
            ServiceRunner(PricingV2(), nats=nats_url),
            ServiceRunner(ReadmePricing(), nats=nats_url) as readme,
        ):

            def response_conflict() -> Any:
                found = [c for c in controller.status().conflicts if c.part == "response"]
                return found[0] if found else None

            conflict = await eventually(response_conflict)
            assert (conflict.service, conflict.subset, conflict.endpoint) == (
                "pricing",
                "v2",
                "quote",
            )
            assert len(conflict.instances) == 2
            assert (readme.id,) in conflict.instances  # v1 is another subset: no conflict
            # Another instance joining one side of the conflict rewrites the registry and
            # the conflict's groups, not the log.
            async with ServiceRunner(ReadmePricing(), nats=nats_url) as another:
                await eventually(
                    lambda: any(
                        len(ids) == 2 and another.id in ids
                        for c in controller.status().conflicts
                        for ids in c.instances
                    )
                )
            warned = [
                r.getMessage()
                for r in caplog.records
                if r.getMessage().startswith("schema conflict: pricing v2 quote")
            ]
            assert len(warned) == 2, warned  # the request's and the response's, once each
            assert str(conflict) in "\n".join(warned)

            status = await run("status", "--nats", nats_url)
            assert status.returncode == 0, status.stderr
            assert f"natsmesh: schema conflict: {conflict}" in status.stderr
            as_json = json.loads((await run("status", "--json", "--nats", nats_url)).stdout)
            assert {c["part"] for c in as_json["conflicts"]} == {"request", "response"}
            listed = await run("ls", "--nats", nats_url)
            assert listed.returncode == 0, listed.stderr
            assert "natsmesh: schema conflict: pricing v2 quote: 2 different response" in (
                listed.stderr
            )
        # Once the odd instance is gone, the conflict is too.
        await eventually(lambda: not controller.status().conflicts)
