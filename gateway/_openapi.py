"""The OpenAPI 3.1 document at ``/openapi.json``, built live from the registry.

Operations come from two places: the control plane's HTTP routes (method and
path template, parameters typed from the target's request schema) and, unless
disabled, ``POST /{service}/{endpoint}`` for every endpoint of every running
service. Schemas are the ones services publish in ``$SRV.INFO``; their local
``$defs`` move to ``components/schemas`` under names that do not collide across
services. Building is pure (:func:`build`); :class:`SpecCache` rebuilds at most
once per directory scan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from gateway import _schemas
from gateway._directory import Directory, EndpointDoc, ServiceDoc
from gateway._paths import Match, Router
from natsmesh import HttpRoute, __version__

OPENAPI: Final = "3.1.0"
SEGMENT_PATTERN: Final = "^[A-Za-z0-9_-]{1,64}$"
_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCALARS: Final = frozenset({"string", "integer", "number", "boolean", "null"})

ERROR_SCHEMA: Final = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "kind", "message"],
            "properties": {
                "code": {"type": "integer"},
                "kind": {"type": "string"},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "loc": {"type": "array", "items": {"type": "string"}},
                            "msg": {"type": "string"},
                            "type": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}
_ERRORS: Final = {
    "400": "Malformed request: a path segment, the JSON body or a header",
    "404": "No such route, service, endpoint or resource",
    "413": "Request body too large",
    "415": "The body is not application/json",
    "422": "The service refused the payload; details give field paths",
    "503": "No responders, or overloaded (see Retry-After)",
    "504": "The budget ran out",
}


class _Components:
    """Schemas moved out of requests and responses, under collision-free names."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def add(self, schema: _schemas.Schema | None, scope: tuple[str, ...]) -> Any:
        """``schema`` with its ``$defs`` moved here; ``{}`` (any JSON) when there is none."""
        if schema is None:
            return {}
        defs = schema.get("$defs")
        names: dict[str, str] = {}
        if isinstance(defs, dict):
            for name in defs:
                if isinstance(name, str):
                    names[name] = self._name(name, defs[name], scope)
            for name, target in names.items():
                self.schemas[target] = _schemas.relocate(defs[name], names)
        return _schemas.relocate(schema, names)

    def _name(self, name: str, schema: Any, scope: tuple[str, ...]) -> str:
        base = _schemas.component_name(name)
        candidates = [base] + [f"{'.'.join(scope[: n + 1])}.{base}" for n in range(len(scope))]
        for candidate in candidates:
            taken = self.schemas.get(candidate)
            if taken is None or taken == schema:
                return candidate
        n = 2
        while f"{candidates[-1]}.{n}" in self.schemas:
            n += 1
        return f"{candidates[-1]}.{n}"


def _responses(response: Any, description: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {
        "200": {"description": description, "content": {"application/json": {"schema": response}}}
    }
    for status, text in _ERRORS.items():
        responses[status] = {"description": text, **error}
    # A service's own codes (ServiceError(409, ...)) pass through as the HTTP status.
    responses["default"] = {"description": "Another error of the service", **error}
    return responses


def _is_scalar(prop: _schemas.Schema) -> bool:
    types = _schemas.types_of(prop)
    if "array" in types:
        items = prop.get("items")
        return (
            isinstance(items, dict)
            and set(_schemas.types_of(items)) <= _SCALARS
            and bool(_schemas.types_of(items))
        )
    return bool(types) and set(types) <= _SCALARS


def _body(request: Any, doc: EndpointDoc | None) -> dict[str, Any]:
    optional = doc is None or doc.request is None or "null" in _schemas.types_of(doc.request)
    return {"required": not optional, "content": {"application/json": {"schema": request}}}


def _route_operation(
    route: HttpRoute, doc: EndpointDoc | None, components: _Components, op_id: str
) -> dict[str, Any]:
    service, _, endpoint = route.target.partition(".")
    props = doc.properties if doc is not None else {}
    request_schema = doc.request if doc is not None else None
    needed = _schemas.required(request_schema)
    path_names = _PARAM.findall(route.path)
    parameters: list[dict[str, Any]] = []
    scope = (service, endpoint)

    def typed(prop: _schemas.Schema) -> Any:
        # A property resolved out of its schema still points at that schema's $defs.
        defs = request_schema.get("$defs", {}) if request_schema is not None else {}
        return components.add({**prop, "$defs": defs}, scope)

    for name in path_names:
        prop = props.get(name)
        schema: Any = {"type": "string", "pattern": SEGMENT_PATTERN}
        if prop is not None and _is_scalar(prop) and "string" not in _schemas.types_of(prop):
            schema = typed(prop)
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": f"{route.method} {route.path} → {route.target}",
        "tags": [service],
    }
    if doc is not None and doc.description:
        operation["description"] = doc.description
    if route.method in ("GET", "DELETE"):
        for name, prop in props.items():
            if name in path_names or not _is_scalar(prop):
                continue
            parameters.append(
                {"name": name, "in": "query", "required": name in needed, "schema": typed(prop)}
            )
    else:
        operation["requestBody"] = _body(components.add(request_schema, scope), doc)
    if parameters:
        operation["parameters"] = parameters
    response = components.add(doc.response if doc is not None else None, scope)
    operation["responses"] = _responses(response, f"the reply of {route.target}")
    return operation


def _default_operation(
    service: ServiceDoc, doc: EndpointDoc, components: _Components
) -> dict[str, Any]:
    scope = (service.name, doc.name)
    operation: dict[str, Any] = {
        "operationId": f"{service.name}.{doc.name}",
        "summary": f"call {service.name}.{doc.name}",
        "tags": [service.name],
        "requestBody": _body(components.add(doc.request, scope), doc),
        "responses": _responses(
            components.add(doc.response, scope), f"the reply of {service.name}.{doc.name}"
        ),
    }
    if doc.description:
        operation["description"] = doc.description
    return operation


def _probe(op_id: str, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "tags": ["gateway"],
            "responses": {
                "200": {"description": "yes", "content": {"application/json": {"schema": {}}}},
                "503": {"description": "no", "content": {"application/json": {"schema": {}}}},
            },
        }
    }


def build(
    services: Mapping[str, ServiceDoc], router: Router, *, title: str = "natsmesh gateway"
) -> dict[str, Any]:
    """The OpenAPI document for these services and the router's routes."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {
        "/healthz": _probe("healthz", "the process is alive"),
        "/readyz": _probe("readyz", "connected to NATS, the HTTP routes loaded"),
    }
    used: set[str] = set()
    for route in router.routes:
        service, _, endpoint = route.target.partition(".")
        known = services.get(service)
        doc = known.endpoints.get(endpoint) if known is not None else None
        op_id = _operation_id(route, used)
        paths.setdefault(route.path, {})[route.method.lower()] = _route_operation(
            route, doc, components, op_id
        )
    for name, service_doc in sorted(services.items()):
        for doc in service_doc.endpoints.values():
            found = router.match("POST", (name, doc.name))
            if isinstance(found, Match) and found.by_default:  # not shadowed by the table
                paths.setdefault(f"/{name}/{doc.name}", {})["post"] = _default_operation(
                    service_doc, doc, components
                )
    return {
        "openapi": OPENAPI,
        "info": {
            "title": title,
            "version": __version__,
            "description": "HTTP in front of a natsmesh service mesh: JSON in, JSON out.",
        },
        "tags": [
            {"name": name, "description": service_doc.description}
            for name, service_doc in sorted(services.items())
        ],
        "paths": paths,
        "components": {"schemas": components.schemas},
    }


def _operation_id(route: HttpRoute, used: set[str]) -> str:
    base = route.method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", route.path).rstrip("_")
    op_id, n = base, 2
    while op_id in used:
        op_id, n = f"{base}_{n}", n + 1
    used.add(op_id)
    return op_id


class SpecCache:
    """The document as bytes, rebuilt when the routes or the directory's scan change."""

    def __init__(self, directory: Directory, *, title: str) -> None:
        self._directory = directory
        self._title = title
        self._key: tuple[Any, ...] | None = None
        self._bytes = b""

    async def get(self, router: Router) -> bytes:
        services = await self._directory.scan()
        key = (router.routes, tuple(sorted((n, id(d)) for n, d in services.items())))
        if key != self._key:
            document = build(services, router, title=self._title)
            self._bytes = json.dumps(document, separators=(",", ":")).encode()
            self._key = key
        return self._bytes
