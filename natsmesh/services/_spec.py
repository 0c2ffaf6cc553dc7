"""``@service`` and ``@endpoint``: declarations that build a :class:`ServiceSpec`.

Decorators only declare. They validate names and signatures at import time (so
a mistake fails where it is written), attach an immutable spec to the class and
return it unchanged; they open no connection and register nothing globally.
Running a spec is :class:`natsmesh.ServiceRunner`'s job.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pydantic

from natsmesh.services._context import Context
from natsmesh.wire._errors import SpecError
from natsmesh.wire._subjects import default_subset, validate_name

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

_ENDPOINT_ATTR: Final = "__natsmesh_endpoint__"
_SERVICE_ATTR: Final = "__natsmesh_service__"
# The semver.org regular expression, as ADR-32 asks of service versions.
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)
_META_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
DEFAULT_MAX_CONCURRENCY: Final = 256


class Payload:
    """How one side of an endpoint (request or response) turns into Python values.

    ``kind`` is ``"none"`` (no payload), ``"bytes"`` (raw, passed through), or
    ``"typed"`` (validated and serialised by a pydantic TypeAdapter).
    """

    __slots__ = ("adapter", "annotation", "kind", "model")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.model: type[pydantic.BaseModel] | None = None
        self.adapter: pydantic.TypeAdapter[Any] | None = None
        if annotation is None or annotation is type(None):
            self.kind = "none"
        elif annotation is bytes:
            self.kind = "bytes"
        else:
            self.kind = "typed"
            try:
                self.adapter = pydantic.TypeAdapter(annotation)
            except pydantic.PydanticUserError as exc:
                raise SpecError(f"type {annotation!r} cannot be validated: {exc}") from exc
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
                self.model = annotation

    def json_schema(self) -> dict[str, Any]:
        if self.adapter is not None:
            return self.adapter.json_schema()
        if self.kind == "bytes":
            return {"type": "string", "contentMediaType": "application/octet-stream"}
        return {"type": "null"}


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    name: str | None
    idempotent: bool
    description: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint of a service: its name, handler and payload types."""

    name: str
    attribute: str
    request: Payload
    response: Payload
    request_param: str | None
    context_param: str | None
    is_async: bool
    idempotent: bool
    description: str
    metadata: Mapping[str, str]

    def schema_metadata(self) -> dict[str, str]:
        """Endpoint metadata for ``$SRV.INFO``: schemas and flags under ``natsmesh.``."""
        return {
            **self.metadata,
            "natsmesh.request_schema": json.dumps(self.request.json_schema(), sort_keys=True),
            "natsmesh.response_schema": json.dumps(self.response.json_schema(), sort_keys=True),
            "natsmesh.idempotent": "true" if self.idempotent else "false",
        }


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """An immutable description of a service; built by ``@service``."""

    name: str
    version: str
    description: str
    metadata: Mapping[str, str]
    subset: str
    max_concurrency: int
    endpoints: tuple[EndpointSpec, ...] = field(default=())

    def endpoint(self, name: str) -> EndpointSpec | None:
        return next((e for e in self.endpoints if e.name == name), None)


@typing.overload
def endpoint(fn: F, /) -> F: ...


@typing.overload
def endpoint(
    *,
    name: str | None = None,
    idempotent: bool = False,
    description: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Callable[[F], F]: ...


def endpoint(
    fn: F | None = None,
    *,
    name: str | None = None,
    idempotent: bool = False,
    description: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Any:
    """Mark a method of a ``@service`` class as an endpoint.

    ``idempotent=True`` declares that running the request twice is harmless, which
    lets callers retry and hedge it after it may have been processed.
    """
    options = EndpointOptions(
        name=None if name is None else validate_name("endpoint", name),
        idempotent=idempotent,
        description=description,
        metadata=_check_metadata(metadata or {}),
    )

    def mark(func: F) -> F:
        if not callable(func):
            raise SpecError("@endpoint decorates a function or method")
        setattr(func, _ENDPOINT_ATTR, options)
        return func

    return mark(fn) if fn is not None else mark


def service(
    name: str,
    *,
    version: str = "0.1.0",
    description: str = "",
    metadata: Mapping[str, str] | None = None,
    subset: str | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> Callable[[C], C]:
    """Declare a class as a service whose ``@endpoint`` methods answer requests.

    ``subset`` (default: ``v<major>`` of the version) names the group of instances
    that route tables can address. ``max_concurrency`` bounds the requests one
    instance handles at once; beyond it, requests are shed with a retryable
    "overloaded" error. Raises InvalidName or SpecError on a bad declaration.
    """
    validate_name("service", name)
    if _SEMVER.fullmatch(version) is None:
        raise SpecError(f"service {name!r}: version {version!r} is not semantic (like 1.2.0)")
    chosen_subset = validate_name("subset", subset) if subset else default_subset(version)
    if max_concurrency < 1:
        raise SpecError(f"service {name!r}: max_concurrency must be at least 1")
    meta = _check_metadata(metadata or {})

    def declare(cls: C) -> C:
        if not isinstance(cls, type):
            raise SpecError("@service decorates a class")
        endpoints = tuple(_endpoints_of(cls))
        if not endpoints:
            raise SpecError(f"service {name!r} has no @endpoint methods")
        seen: set[str] = set()
        for ep in endpoints:
            if ep.name in seen:
                raise SpecError(f"service {name!r}: endpoint {ep.name!r} declared twice")
            seen.add(ep.name)
        spec = ServiceSpec(
            name=name,
            version=version,
            description=description,
            metadata=meta,
            subset=chosen_subset,
            max_concurrency=max_concurrency,
            endpoints=endpoints,
        )
        setattr(cls, _SERVICE_ATTR, spec)
        return cls

    return declare


def spec_of(obj: object) -> ServiceSpec:
    """The spec of a ``@service`` class or instance; raises SpecError for anything else."""
    spec = getattr(obj, _SERVICE_ATTR, None)
    if not isinstance(spec, ServiceSpec):
        raise SpecError(f"{obj!r} is not a @service class or instance")
    return spec


def _endpoints_of(cls: type) -> list[EndpointSpec]:
    found = []
    for attribute, member in inspect.getmembers(cls):
        options = getattr(member, _ENDPOINT_ATTR, None)
        if isinstance(options, EndpointOptions):
            found.append(_endpoint_spec(cls, attribute, member, options))
    return found


def _endpoint_spec(
    cls: type, attribute: str, func: Callable[..., Any], options: EndpointOptions
) -> EndpointSpec:
    where = f"{cls.__name__}.{attribute}"
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise SpecError(f"{where}: cannot resolve its type hints: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())[1:]  # skip self
    request_param = context_param = None
    request_type: Any = None
    for param in params:
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise SpecError(f"{where}: parameter {param.name!r} must be a plain parameter")
        annotation = hints.get(param.name, Any)
        if isinstance(annotation, type) and issubclass(annotation, Context):
            context_param = param.name
        elif request_param is None:
            request_param, request_type = param.name, annotation
        else:
            raise SpecError(f"{where}: takes one request parameter and an optional Context")
    response_type = hints.get("return", Any)
    return EndpointSpec(
        name=options.name or validate_name("endpoint", attribute),
        attribute=attribute,
        request=Payload(request_type) if request_param else Payload(None),
        response=Payload(response_type),
        request_param=request_param,
        context_param=context_param,
        is_async=inspect.iscoroutinefunction(func),
        idempotent=options.idempotent,
        description=options.description or inspect.getdoc(func) or "",
        metadata=options.metadata,
    )


def _check_metadata(metadata: Mapping[str, str]) -> Mapping[str, str]:
    for key, value in metadata.items():
        if not isinstance(key, str) or _META_KEY.fullmatch(key) is None:
            raise SpecError(f"metadata key {key!r}: use letters, digits, '_', '-' and '.'")
        if key.startswith("natsmesh."):
            raise SpecError(f"metadata key {key!r}: the 'natsmesh.' namespace is reserved")
        if not isinstance(value, str) or len(value) > 4096:
            raise SpecError(f"metadata {key!r}: values are strings of at most 4096 characters")
    return dict(metadata)
