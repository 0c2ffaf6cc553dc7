"""Two versions of the ``pricing`` service, to run side by side in one queue group.

``PricingV1`` (1.0.0) charges the catalog's list price. ``PricingV2`` (2.0.0)
adds a volume discount. Both read the list price with a nested call to
``catalog.get`` that inherits the remaining budget, and both say in the
:class:`Quote` which version priced it. While both run, callers of
``pricing.quote`` get either, as NATS spreads requests over the queue group.

Run both with ``python -m examples.shop.pricing [--nats URL]``.
"""

from __future__ import annotations

from examples.shop._run import run
from examples.shop.catalog import fetch_product
from examples.shop.models import Product, Quote, QuoteRequest
from natsmesh import Context, endpoint, service, spec_of

#: (minimum quantity, percent off), largest first: PricingV2's volume discount.
VOLUME_DISCOUNTS = ((50, 10), (10, 5))


def volume_discount_percent(quantity: int) -> int:
    """The percentage PricingV2 takes off an order of ``quantity``."""
    return next((pct for least, pct in VOLUME_DISCOUNTS if quantity >= least), 0)


def make_quote(product: Product, quantity: int, *, percent_off: int, version: str) -> Quote:
    """A quote for ``percent_off`` off the list price; the discount rounds up, for the buyer."""
    subtotal = product.price_cents * quantity
    discount = -(-subtotal * percent_off // 100)
    return Quote(
        product_id=product.id,
        quantity=quantity,
        unit_price_cents=product.price_cents,
        discount_cents=discount,
        total_cents=subtotal - discount,
        pricing_version=version,
    )


@service("pricing", version="1.0.0", description="List prices", metadata={"team": "shop"})
class PricingV1:
    @endpoint(idempotent=True)
    async def quote(self, req: QuoteRequest, ctx: Context) -> Quote:
        """The list price of ``quantity`` of a product; 404 for an unknown product."""
        product = await fetch_product(ctx.mesh, req.product_id)
        return make_quote(product, req.quantity, percent_off=0, version=spec_of(self).version)


@service(
    "pricing",
    version="2.0.0",
    description="List prices with a volume discount",
    metadata={"team": "shop"},
)
class PricingV2:
    @endpoint(idempotent=True)
    async def quote(self, req: QuoteRequest, ctx: Context) -> Quote:
        """The price of ``quantity`` of a product, volume discount included; 404 when unknown."""
        product = await fetch_product(ctx.mesh, req.product_id)
        percent = volume_discount_percent(req.quantity)
        return make_quote(product, req.quantity, percent_off=percent, version=spec_of(self).version)


if __name__ == "__main__":
    run(PricingV1(), PricingV2())
