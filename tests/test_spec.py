"""Tests of natsmesh.services._spec: what @service and @endpoint accept, reject and record."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from natsmesh import Context, InvalidName, SpecError, endpoint, service, spec_of
from natsmesh.services._spec import DEFAULT_MAX_CONCURRENCY, EndpointSpec


class Order(pydantic.BaseModel):
    item: str
    qty: int


class Receipt(pydantic.BaseModel):
    id: str


class MyContext(Context):
    """A Context subclass is still recognised as the context parameter."""


def only_endpoint(cls: type) -> EndpointSpec:
    (ep,) = spec_of(cls).endpoints
    return ep


# -- names and versions -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.b", "a*", ">", "", " x", "1svc", "x" * 65, "é"])
def test_service_rejects_bad_names(name: str) -> None:
    with pytest.raises(InvalidName):
        service(name)


@pytest.mark.parametrize("name", ["a.b", "a*", ">", "", "a b", "_x"])
def test_endpoint_rejects_bad_names(name: str) -> None:
    with pytest.raises(InvalidName):
        endpoint(name=name)


def test_endpoint_name_defaults_to_the_method_and_a_bad_method_name_is_rejected() -> None:
    with pytest.raises(InvalidName):

        @service("svc")
        class Svc:
            @endpoint
            async def _hidden(self) -> None: ...


def test_subset_name_is_validated() -> None:
    with pytest.raises(InvalidName):
        service("svc", subset="v1.canary")


@pytest.mark.parametrize("version", ["1", "1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0 ", "latest"])
def test_non_semver_version_is_a_spec_error(version: str) -> None:
    with pytest.raises(SpecError, match="not semantic"):
        service("svc", version=version)


def test_a_version_with_non_ascii_digits_is_not_semver() -> None:
    # \d matches any Unicode digit unless the pattern is ASCII-only.
    with pytest.raises(SpecError):
        service("svc", version="1\u0663.0.0")


@pytest.mark.parametrize(
    ("version", "subset"), [("0.1.0", "v0"), ("2.1.0", "v2"), ("1.0.0-rc.1+b.5", "v1")]
)
def test_subset_defaults_to_the_major_version(version: str, subset: str) -> None:
    @service("svc", version=version)
    class Svc:
        @endpoint
        async def ping(self) -> None: ...

    spec = spec_of(Svc)
    assert spec.version == version
    assert spec.subset == subset


def test_explicit_subset_and_concurrency() -> None:
    @service("svc", subset="canary", max_concurrency=7)
    class Svc:
        @endpoint
        async def ping(self) -> None: ...

    assert spec_of(Svc).subset == "canary"
    assert spec_of(Svc).max_concurrency == 7


@pytest.mark.parametrize("limit", [0, -1])
def test_max_concurrency_must_be_positive(limit: int) -> None:
    with pytest.raises(SpecError):
        service("svc", max_concurrency=limit)


# -- declarations that cannot run ---------------------------------------------------------


def test_a_service_without_endpoints_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="no @endpoint"):

        @service("svc")
        class Svc:
            async def not_an_endpoint(self) -> None: ...


def test_duplicate_endpoint_names_are_a_spec_error() -> None:
    with pytest.raises(SpecError, match="twice"):

        @service("svc")
        class Svc:
            @endpoint(name="get")
            async def one(self) -> None: ...

            @endpoint(name="get")
            async def two(self) -> None: ...


def test_too_many_request_params_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="one request parameter"):

        @service("svc")
        class Svc:
            @endpoint
            async def add(self, a: int, b: int) -> int:
                return a + b


async def _star_args(self: object, *items: int) -> None: ...


async def _star_kwargs(self: object, **items: int) -> None: ...


async def _positional_only(self: object, x: int, /) -> None: ...


@pytest.mark.parametrize("handler", [_star_args, _star_kwargs, _positional_only])
def test_parameters_must_be_plain(handler: Any) -> None:
    cls = type("Svc", (), {"ep": endpoint(handler)})
    with pytest.raises(SpecError, match="plain parameter"):
        service("svc")(cls)


def test_a_type_pydantic_cannot_validate_is_a_spec_error() -> None:
    class Opaque:
        pass

    with pytest.raises(SpecError):

        @service("svc")
        class Svc:
            @endpoint
            async def ep(self, x: Opaque) -> None: ...


def test_service_decorates_classes_only() -> None:
    with pytest.raises(SpecError):
        service("svc")(lambda: None)  # type: ignore[type-var]


def test_spec_of_a_non_service_is_a_spec_error() -> None:
    class Plain:
        @endpoint
        async def ping(self) -> None: ...

    for obj in (Plain, Plain(), object(), None, 42):
        with pytest.raises(SpecError, match="not a @service"):
            spec_of(obj)


# -- what the spec records ----------------------------------------------------------------


def test_request_context_and_response_are_detected() -> None:
    @service("svc")
    class Svc:
        @endpoint
        async def plain(self) -> None: ...

        @endpoint
        async def with_request(self, order: Order) -> Receipt:
            return Receipt(id=order.item)

        @endpoint
        async def with_context(self, ctx: Context, order: Order) -> Receipt:
            return Receipt(id=ctx.service + order.item)

        @endpoint
        async def context_only(self, *, c: MyContext) -> int:
            return 1

        @endpoint
        async def untyped(self, value) -> dict[str, Any]:  # type: ignore[no-untyped-def]
            return {}

    spec = spec_of(Svc)
    eps = {ep.name: ep for ep in spec.endpoints}

    assert eps["plain"].request_param is None
    assert eps["plain"].context_param is None
    assert eps["plain"].request.kind == "none"
    assert eps["plain"].response.kind == "none"

    assert eps["with_request"].request_param == "order"
    assert eps["with_request"].context_param is None
    assert eps["with_request"].request.model is Order
    assert eps["with_request"].response.model is Receipt

    assert eps["with_context"].request_param == "order"
    assert eps["with_context"].context_param == "ctx"

    assert eps["context_only"].request_param is None
    assert eps["context_only"].context_param == "c"

    assert eps["untyped"].request_param == "value"
    assert eps["untyped"].request.kind == "typed"


def test_bytes_payloads_are_passed_through() -> None:
    @service("svc")
    class Svc:
        @endpoint
        async def raw(self, data: bytes) -> bytes:
            return data

    ep = only_endpoint(Svc)
    assert ep.request.kind == "bytes"
    assert ep.response.kind == "bytes"


def test_sync_and_async_handlers_are_told_apart() -> None:
    @service("svc")
    class Svc:
        @endpoint
        async def fast(self) -> None: ...

        @endpoint
        def blocking(self) -> None: ...

    eps = {ep.name: ep for ep in spec_of(Svc).endpoints}
    assert eps["fast"].is_async
    assert not eps["blocking"].is_async


def test_endpoint_options_and_docstring() -> None:
    @service("svc")
    class Svc:
        @endpoint(name="get-order", idempotent=True, metadata={"team": "shop"})
        async def get(self, order: Order) -> Receipt:
            """Look an order up."""
            return Receipt(id="1")

        @endpoint(description="explicit")
        async def put(self, order: Order) -> None:
            """Ignored docstring."""

    eps = {ep.name: ep for ep in spec_of(Svc).endpoints}
    assert eps["get-order"].attribute == "get"
    assert eps["get-order"].idempotent
    assert eps["get-order"].description == "Look an order up."
    assert not eps["put"].idempotent
    assert eps["put"].description == "explicit"


def test_schema_metadata_is_strings_with_json_schemas() -> None:
    @service("svc")
    class Svc:
        @endpoint(idempotent=True, metadata={"team": "shop"})
        async def get(self, order: Order) -> Receipt:
            return Receipt(id="1")

        @endpoint
        async def fire(self) -> None: ...

    eps = {ep.name: ep for ep in spec_of(Svc).endpoints}
    meta = eps["get"].schema_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["team"] == "shop"
    assert meta["natsmesh.idempotent"] == "true"
    request = json.loads(meta["natsmesh.request_schema"])
    assert set(request["properties"]) == {"item", "qty"}
    assert json.loads(meta["natsmesh.response_schema"])["properties"]["id"]["type"] == "string"

    fire = eps["fire"].schema_metadata()
    assert fire["natsmesh.idempotent"] == "false"
    assert json.loads(fire["natsmesh.request_schema"]) == {"type": "null"}


@pytest.mark.parametrize("key", ["natsmesh.version", "natsmesh.idempotent", "natsmesh.x"])
def test_reserved_metadata_keys_are_rejected(key: str) -> None:
    with pytest.raises(SpecError, match="reserved"):
        service("svc", metadata={key: "1"})
    with pytest.raises(SpecError, match="reserved"):
        endpoint(metadata={key: "1"})


@pytest.mark.parametrize(
    "metadata", [{"": "v"}, {"a b": "v"}, {"k": 1}, {"k": None}, {"k": "v" * 4097}, {"k\n": "v"}]
)
def test_bad_metadata_is_rejected(metadata: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        service("svc", metadata=metadata)


def test_service_metadata_and_defaults() -> None:
    @service("svc", description="does things", metadata={"owner": "me"})
    class Svc:
        @endpoint
        async def ping(self) -> None: ...

    spec = spec_of(Svc)
    assert spec.name == "svc"
    assert spec.description == "does things"
    assert dict(spec.metadata) == {"owner": "me"}
    assert spec.max_concurrency == DEFAULT_MAX_CONCURRENCY
    assert spec.endpoint("ping") is spec.endpoints[0]
    assert spec.endpoint("nope") is None


# -- decorators only declare ------------------------------------------------------------


def test_decorating_registers_nothing_global() -> None:
    @service("same", version="1.0.0")
    class First:
        @endpoint
        async def a(self) -> None: ...

    @service("same", version="2.0.0")
    class Second:
        @endpoint
        async def b(self) -> None: ...

    first, second = spec_of(First), spec_of(Second)
    assert [e.name for e in first.endpoints] == ["a"]
    assert [e.name for e in second.endpoints] == ["b"]
    assert (first.version, second.version) == ("1.0.0", "2.0.0")
    assert spec_of(First()) is first


def test_the_decorators_return_what_they_were_given() -> None:
    async def handler(self: object) -> None: ...

    assert endpoint(handler) is handler

    class Svc:
        ping = handler

    assert service("svc")(Svc) is Svc


def test_specs_are_immutable() -> None:
    @service("svc")
    class Svc:
        @endpoint
        async def ping(self) -> None: ...

    spec = spec_of(Svc)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
