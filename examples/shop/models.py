"""The shop's messages: pydantic models shared by its services and their callers.

Money is whole cents in an ``int``: exact, and carried by msgpack as a plain
integer. Every model is frozen and rejects unknown fields, because a request is
user input until it has validated.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: A product's id in the catalog.
ProductKey = Annotated[int, Field(ge=1)]
Cents = Annotated[int, Field(ge=0)]
#: How many of a product one quote or order may be for.
Quantity = Annotated[int, Field(ge=1, le=100)]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Product(Message):
    id: ProductKey
    name: str
    price_cents: Cents
    stock: Annotated[int, Field(ge=0)]


class ProductId(Message):
    """The request of ``catalog.get``."""

    id: ProductKey


class ProductFilter(Message):
    """The optional request of ``catalog.list``: which products to return."""

    max_price_cents: Cents | None = None
    in_stock: bool = False


class ProductList(Message):
    products: list[Product]


class QuoteRequest(Message):
    product_id: ProductKey
    quantity: Quantity


class Quote(Message):
    """A price for a quantity of a product, and the version of pricing that made it."""

    product_id: ProductKey
    quantity: Quantity
    unit_price_cents: Cents
    discount_cents: Cents
    total_cents: Cents
    pricing_version: str


class OrderRequest(Message):
    product_id: ProductKey
    quantity: Quantity
    customer: Annotated[str, Field(min_length=1, max_length=64)]


class OrderId(Message):
    """The request of ``orders.get``."""

    id: Annotated[str, Field(min_length=1, max_length=64)]


class Order(Message):
    id: str
    customer: str
    product_id: ProductKey
    product_name: str
    quantity: Quantity
    unit_price_cents: Cents
    discount_cents: Cents
    total_cents: Cents
    pricing_version: str
