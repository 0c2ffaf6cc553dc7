"""The ``orders`` service: place an order for a product, read it back.

``place`` checks stock with ``catalog.get`` and prices with ``pricing.quote``,
both nested calls that share what is left of the caller's budget. Orders live
in the memory of one instance: run one ``orders`` instance, or ``get`` may ask
an instance that never saw the order.

Run it with ``python -m examples.shop.orders [--nats URL]``.
"""

from __future__ import annotations

import uuid

from examples.shop._run import run
from examples.shop.catalog import fetch_product
from examples.shop.models import Order, OrderId, OrderRequest, Quote, QuoteRequest
from natsmesh import Context, ServiceError, endpoint, service


@service(
    "orders", version="1.0.0", description="Places and keeps orders", metadata={"team": "shop"}
)
class Orders:
    def __init__(self) -> None:
        self._orders: dict[str, Order] = {}

    # Not idempotent: a retried `place` after a lost reply would place a second order.
    @endpoint
    async def place(self, req: OrderRequest, ctx: Context) -> Order:
        """Place an order; 404 for an unknown product, 409 when there is not enough stock."""
        product = await fetch_product(ctx.mesh, req.product_id)
        if req.quantity > product.stock:
            raise ServiceError(409, f"only {product.stock} of {product.name!r} in stock")
        quote = await ctx.mesh.call(
            "pricing.quote",
            QuoteRequest(product_id=product.id, quantity=req.quantity),
            response=Quote,
        )
        order = Order(
            id=f"ord-{uuid.uuid4().hex[:16]}",
            customer=req.customer,
            product_id=product.id,
            product_name=product.name,
            quantity=req.quantity,
            unit_price_cents=quote.unit_price_cents,
            discount_cents=quote.discount_cents,
            total_cents=quote.total_cents,
            pricing_version=quote.pricing_version,
        )
        self._orders[order.id] = order
        return order

    @endpoint(idempotent=True)
    async def get(self, req: OrderId) -> Order:
        """The order with this id; 404 when this instance has none."""
        order = self._orders.get(req.id)
        if order is None:
            raise ServiceError(404, f"no order {req.id!r}")
        return order


if __name__ == "__main__":
    run(Orders())
