"""Every example in examples/ executed: the shop in-process, each module as a process, the client.

All of it against a real nats-server (the ``nats_url`` fixture of natsmesh.testing).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from pydantic import BaseModel

import examples.shop
from examples.shop.catalog import PRODUCTS, Catalog
from examples.shop.models import (
    Order,
    OrderId,
    OrderRequest,
    Product,
    ProductFilter,
    ProductId,
    ProductList,
    Quote,
    QuoteRequest,
)
from examples.shop.orders import Orders
from examples.shop.pricing import PricingV1, PricingV2, make_quote, volume_discount_percent
from natsmesh import (
    Context,
    DeadlineExceeded,
    InvalidRequest,
    Mesh,
    RemoteError,
    ServiceRunner,
    endpoint,
    service,
)

ROOT = Path(__file__).resolve().parent.parent
BY_ID = {product.id: product for product in PRODUCTS}
READY_WITHIN = 30.0
STOP_WITHIN = 15.0


@asynccontextmanager
async def serving(nats_url: str, *services: object) -> AsyncIterator[Mesh]:
    """Run the service objects in-process; yield a Mesh client of the same server."""
    async with AsyncExitStack() as stack:
        for target in services:
            await stack.enter_async_context(ServiceRunner(target, nats=nats_url))
        yield await stack.enter_async_context(Mesh(nats_url, name="test"))


def shop() -> list[object]:
    return [cls() for cls in examples.shop.SERVICES]


def expected_total(product: Product, quantity: int, version: str) -> int:
    percent = {"1.0.0": 0, "2.0.0": volume_discount_percent(quantity)}[version]
    return make_quote(product, quantity, percent_off=percent, version=version).total_cents


# -- pure pricing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "percent"), [(1, 0), (9, 0), (10, 5), (49, 5), (50, 10), (100, 10)]
)
def test_volume_discount_steps(quantity: int, percent: int) -> None:
    assert volume_discount_percent(quantity) == percent


def test_a_discount_rounds_in_the_buyers_favour() -> None:
    product = Product(id=9, name="Odd", price_cents=333, stock=1)
    quote = make_quote(product, 10, percent_off=5, version="2.0.0")
    # 5% of 3330 is 166.5 cents: the buyer gets the half cent.
    assert (quote.discount_cents, quote.total_cents) == (167, 3163)


def test_services_lists_the_shop() -> None:
    services = examples.shop.SERVICES
    assert services == [Catalog, PricingV1, PricingV2, Orders]


# -- the shop in-process -------------------------------------------------------------


@pytest.mark.anyio
async def test_an_order_end_to_end(nats_url: str) -> None:
    async with serving(nats_url, *shop()) as mesh:
        request = OrderRequest(product_id=3, quantity=10, customer="ada")
        order = await mesh.call("orders.place", request, response=Order, timeout=5)
        assert order.customer == "ada"
        assert (order.product_id, order.product_name) == (3, "Moka pot, 6 cups")
        assert (order.quantity, order.unit_price_cents) == (10, 3500)
        assert order.pricing_version in {"1.0.0", "2.0.0"}
        assert order.total_cents == expected_total(BY_ID[3], 10, order.pricing_version)
        assert order.total_cents + order.discount_cents == 35000

        again = await mesh.call("orders.get", OrderId(id=order.id), response=Order)
        assert again == order


@pytest.mark.anyio
async def test_both_pricing_versions_answer_through_the_queue_group(nats_url: str) -> None:
    async with serving(nats_url, *shop()) as mesh:
        versions: set[str] = set()
        for _ in range(40):
            order = await mesh.call(
                "orders.place",
                OrderRequest(product_id=1, quantity=20, customer="bo"),
                response=Order,
            )
            assert order.total_cents == expected_total(BY_ID[1], 20, order.pricing_version)
            versions.add(order.pricing_version)
        # Each call picks one of two queue members at random: both miss 40 times in 2**-39.
        assert versions == {"1.0.0", "2.0.0"}
        quote = await mesh.call(
            "pricing.quote", QuoteRequest(product_id=1, quantity=20), response=Quote
        )
        assert quote.discount_cents == (
            2400 * 20 * 5 // 100 if quote.pricing_version == "2.0.0" else 0
        )


@pytest.mark.anyio
async def test_catalog_lists_with_and_without_a_filter(nats_url: str) -> None:
    async with serving(nats_url, Catalog()) as mesh:
        everything = await mesh.call("catalog.list", response=ProductList)
        assert [p.id for p in everything.products] == sorted(BY_ID)

        cheap = await mesh.call(
            "catalog.list", ProductFilter(max_price_cents=3500, in_stock=True), response=ProductList
        )
        assert [p.id for p in cheap.products] == [1, 3, 4]

        product = await mesh.call("catalog.get", ProductId(id=5), response=Product)
        assert product == BY_ID[5]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "payload"),
    [
        ("catalog.get", ProductId(id=999)),
        ("pricing.quote", QuoteRequest(product_id=999, quantity=1)),
        ("orders.place", OrderRequest(product_id=999, quantity=1, customer="ada")),
        ("orders.get", OrderId(id="ord-nope")),
    ],
)
async def test_unknown_ids_are_404(nats_url: str, target: str, payload: BaseModel) -> None:
    async with serving(nats_url, *shop()) as mesh:
        with pytest.raises(RemoteError) as caught:
            await mesh.call(target, payload, response=dict)
        assert caught.value.code == 404
        assert caught.value.kind == "service"
        assert caught.value.message in {"no product 999", "no order 'ord-nope'"}


@pytest.mark.anyio
async def test_more_than_the_stock_is_409(nats_url: str) -> None:
    async with serving(nats_url, *shop()) as mesh:
        with pytest.raises(RemoteError) as caught:
            await mesh.call(
                "orders.place",
                OrderRequest(product_id=2, quantity=4, customer="ada"),
                response=Order,
            )
        assert caught.value.code == 409
        assert caught.value.message == "only 3 of 'Burr grinder' in stock"


@pytest.mark.anyio
async def test_a_quantity_outside_1_to_100_is_rejected_by_the_service(nats_url: str) -> None:
    async with serving(nats_url, *shop()) as mesh:
        # A dict, so the caller's own model cannot refuse it first.
        payload = {"product_id": 2, "quantity": 101, "customer": "ada"}
        with pytest.raises(InvalidRequest) as caught:
            await mesh.call("orders.place", payload, response=Order)
        assert caught.value.code == 422
        assert [d["loc"] for d in caught.value.details] == [["quantity"]]


# -- budgets across nested calls -----------------------------------------------------


@service("catalog", version="1.0.0")
class RecordingCatalog:
    """The real catalog, noting how much budget each request arrived with."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self.remaining: list[float] = []

    @endpoint(idempotent=True)
    async def get(self, req: ProductId, ctx: Context) -> Product:
        self.remaining.append(ctx.remaining)
        return await self.catalog.get(req)


@service("catalog", version="1.0.0")
class StuckCatalog:
    """A catalog that never answers, noting when its handler is cancelled."""

    def __init__(self) -> None:
        self.remaining: list[float] = []
        self.cancelled = anyio.Event()

    @endpoint(idempotent=True)
    async def get(self, req: ProductId, ctx: Context) -> Product:
        self.remaining.append(ctx.remaining)
        try:
            await anyio.sleep_forever()  # until the inherited budget cancels it
        finally:
            self.cancelled.set()
        raise AssertionError("the budget should have run out")


@pytest.mark.anyio
async def test_nested_calls_get_what_is_left_of_the_budget(nats_url: str) -> None:
    catalog = RecordingCatalog()
    async with serving(nats_url, catalog, PricingV1(), PricingV2(), Orders()) as mesh:
        request = OrderRequest(product_id=3, quantity=1, customer="ada")
        await mesh.call("orders.place", request, response=Order, timeout=3)
    # Once from orders (stock), once from pricing (list price), both under the 3 s
    # of the outer call rather than the 5 s a fresh Mesh call would get.
    assert len(catalog.remaining) == 2
    assert all(0 < left < 3 for left in catalog.remaining), catalog.remaining


@pytest.mark.anyio
async def test_a_short_budget_ends_in_deadline_exceeded_not_a_hang(nats_url: str) -> None:
    catalog = StuckCatalog()
    async with serving(nats_url, catalog, PricingV1(), Orders()) as mesh:
        request = OrderRequest(product_id=3, quantity=1, customer="ada")
        with anyio.fail_after(5), pytest.raises(DeadlineExceeded) as caught:
            await mesh.call("orders.place", request, response=Order, timeout=0.3)
        assert (caught.value.service, caught.value.endpoint) == ("orders", "place")
        # The catalog's handler was cut off by the budget it inherited, not its own 60 s.
        with anyio.fail_after(5):
            await catalog.cancelled.wait()
    assert len(catalog.remaining) == 1
    assert 0 < catalog.remaining[0] < 0.3


# -- the modules as processes, and the client ------------------------------------------


@asynccontextmanager
async def module_process(module: str, nats_url: str, log: Path) -> AsyncIterator[anyio.abc.Process]:
    """Run ``python -m module`` with NATS_URL set; on the way out, make sure it is gone."""
    env = {**os.environ, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = await anyio.open_process(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        async with process:
            try:
                yield process
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def wait_until_serving(
    mesh: Mesh, name: str, instances: int, process: anyio.abc.Process
) -> None:
    with anyio.fail_after(READY_WITHIN):
        while len(await mesh.services(name, timeout=0.25)) < instances:
            assert process.returncode is None, f"{name} exited with {process.returncode}"


async def stop(process: anyio.abc.Process, signum: signal.Signals) -> int:
    process.send_signal(signum)
    with anyio.fail_after(STOP_WITHIN):
        return await process.wait()


@pytest.mark.anyio
async def test_each_module_runs_alone_and_the_client_uses_them(
    nats_url: str, tmp_path: Path
) -> None:
    modules = {"catalog": 1, "pricing": 2, "orders": 1}  # instances each module serves
    logs = {name: tmp_path / f"{name}.log" for name in modules}
    async with AsyncExitStack() as stack:
        mesh = await stack.enter_async_context(Mesh(nats_url, name="test"))
        processes = {
            name: await stack.enter_async_context(
                module_process(f"examples.shop.{name}", nats_url, logs[name])
            )
            for name in modules
        }
        for name, instances in modules.items():
            await wait_until_serving(mesh, name, instances, processes[name])

        env = {**os.environ, "NATS_URL": nats_url}
        with anyio.fail_after(30):
            client = await anyio.run_process(
                [sys.executable, "-m", "examples.client"], cwd=ROOT, env=env, check=False
            )
        output = client.stdout.decode()
        assert client.returncode == 0, client.stderr.decode()
        assert "order ord-" in output
        assert "12 x Espresso beans, 1 kg" in output
        assert "refused as expected: RemoteError 409" in output

        for name, process in processes.items():
            assert await stop(process, signal.SIGTERM) == 0, logs[name].read_text()
            assert ": draining" in logs[name].read_text()
        assert await mesh.services(timeout=0.25) == []
    for name in modules:
        assert "Warning" not in logs[name].read_text()


@pytest.mark.anyio
async def test_a_module_stops_cleanly_on_sigint(nats_url: str, tmp_path: Path) -> None:
    log = tmp_path / "catalog.log"
    async with (
        Mesh(nats_url, name="test") as mesh,
        module_process("examples.shop.catalog", nats_url, log) as process,
    ):
        await wait_until_serving(mesh, "catalog", 1, process)
        assert await stop(process, signal.SIGINT) == 0, log.read_text()
    assert ": draining" in log.read_text()
