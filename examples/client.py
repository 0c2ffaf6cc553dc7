"""A first client of the shop: list products, place an order, read it back, meet an error.

Start the shop (``natsmesh up``, or each ``python -m examples.shop.<module>``),
then run ``python -m examples.client [--nats URL]``.
"""

from __future__ import annotations

import argparse
import functools

import anyio

from examples.shop.models import Order, OrderId, OrderRequest, ProductFilter, ProductList
from natsmesh import Mesh, RemoteError


def dollars(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


async def shop(nats: str | None) -> None:
    """Talk to the shop's services through the mesh at ``nats`` (default: ``$NATS_URL``)."""
    async with Mesh(nats, name="shop-client", timeout=2) as mesh:
        listed = await mesh.call("catalog.list", ProductFilter(in_stock=True), response=ProductList)
        print("in stock:")
        for product in listed.products:
            print(
                f"  {product.id:>3}  {product.name:<22} {dollars(product.price_cents):>8}"
                f"  ({product.stock} left)"
            )

        request = OrderRequest(product_id=1, quantity=12, customer="ada")
        order = await mesh.call("orders.place", request, response=Order)
        print(
            f"order {order.id}: {order.quantity} x {order.product_name}"
            f" at {dollars(order.unit_price_cents)}, discount {dollars(order.discount_cents)},"
            f" total {dollars(order.total_cents)} (pricing {order.pricing_version})"
        )
        again = await mesh.call("orders.get", OrderId(id=order.id), response=Order)
        if again != order:
            raise SystemExit(f"orders.get returned {again}, not the order placed")

        # Errors arrive typed, with the code the service chose.
        try:
            await mesh.call(
                "orders.place",
                OrderRequest(product_id=2, quantity=50, customer="ada"),
                response=Order,
            )
        except RemoteError as exc:
            print(f"refused as expected: {type(exc).__name__} {exc.code}: {exc.message}")
        else:
            raise SystemExit("an order for more than the stock was accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats", help="NATS server URL (default: $NATS_URL, else local)")
    args = parser.parse_args()
    anyio.run(functools.partial(shop, args.nats))


if __name__ == "__main__":
    main()
