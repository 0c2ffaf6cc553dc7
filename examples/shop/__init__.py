"""A small shop on natsmesh: a catalog, two versions of pricing, and orders.

``SERVICES`` lists the service classes that make up the shop (``natsmesh up``
runs them); each module also runs alone, as ``python -m examples.shop.<module>``.
The models callers need are in :mod:`examples.shop.models`.
"""

from __future__ import annotations

# SERVICES is resolved on first use (PEP 562) rather than imported here: importing
# the service modules with the package would make `python -m examples.shop.catalog`
# find its own module already imported, which runpy warns about.
SERVICES: list[type]


def __getattr__(name: str) -> list[type]:
    if name != "SERVICES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from examples.shop.catalog import Catalog
    from examples.shop.orders import Orders
    from examples.shop.pricing import PricingV1, PricingV2

    return [Catalog, PricingV1, PricingV2, Orders]


__all__ = ["SERVICES"]
