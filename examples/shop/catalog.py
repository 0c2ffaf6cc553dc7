"""The ``catalog`` service: products, list prices and stock, from an in-memory table.

Run it alone with ``python -m examples.shop.catalog [--nats URL]``.
:func:`fetch_product` is how the other shop services read from it.
"""

from __future__ import annotations

from collections.abc import Iterable

from examples.shop._run import run
from examples.shop.models import Product, ProductFilter, ProductId, ProductList
from natsmesh import ErrorKind, Mesh, RemoteError, ServiceError, endpoint, service

PRODUCTS = (
    Product(id=1, name="Espresso beans, 1 kg", price_cents=2400, stock=40),
    Product(id=2, name="Burr grinder", price_cents=12900, stock=3),
    Product(id=3, name="Moka pot, 6 cups", price_cents=3500, stock=12),
    Product(id=4, name="Filter papers, 100", price_cents=450, stock=500),
    Product(id=5, name="Gooseneck kettle", price_cents=5900, stock=0),
)


@service(
    "catalog",
    version="1.0.0",
    description="Products, list prices and stock",
    metadata={"team": "shop"},
)
class Catalog:
    def __init__(self, products: Iterable[Product] = PRODUCTS) -> None:
        self._products = {product.id: product for product in products}

    @endpoint(idempotent=True)
    async def get(self, req: ProductId) -> Product:
        """The product with this id; 404 when there is none."""
        product = self._products.get(req.id)
        if product is None:
            raise ServiceError(404, f"no product {req.id}")
        return product

    @endpoint(name="list", idempotent=True)
    async def list_products(self, req: ProductFilter | None = None) -> ProductList:
        """The products that pass the filter (all of them without one), by id."""
        wanted = req or ProductFilter()
        return ProductList(
            products=[
                product
                for product in sorted(self._products.values(), key=lambda p: p.id)
                if (wanted.max_price_cents is None or product.price_cents <= wanted.max_price_cents)
                and (product.stock > 0 or not wanted.in_stock)
            ]
        )


async def fetch_product(mesh: Mesh, product_id: int) -> Product:
    """Read a product through ``catalog.get`` with the caller's budget and trace.

    Raises ServiceError(404) when the catalog has no such product, so a handler
    that lets it pass answers its own caller with a 404 rather than a 502.
    """
    try:
        return await mesh.call("catalog.get", ProductId(id=product_id), response=Product)
    except RemoteError as exc:
        # UnknownEndpoint is a 404 too, but a catalog without `get` is a broken deployment.
        if exc.code == 404 and exc.kind == ErrorKind.SERVICE:
            raise ServiceError(404, exc.message) from None
        raise


if __name__ == "__main__":
    run(Catalog())
