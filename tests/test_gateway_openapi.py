"""The OpenAPI document: built from live services, references that resolve, and a
schemathesis run against ``natsmesh up`` that finds no server error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from gateway_env import running_shop
from procs import Proc

from gateway._directory import service_doc
from gateway._openapi import build
from gateway._paths import Router
from natsmesh import HttpRoute, ServiceRunner, endpoint, service
from natsmesh.testing import free_port


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def check_document(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    schemas = spec["components"]["schemas"]
    for ref in refs(spec):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in spec["paths"].items():
        declared = {
            p["name"] for op in item.values() for p in op.get("parameters", ()) if p["in"] == "path"
        }
        assert declared == set(part[1:-1] for part in path.split("/") if part.startswith("{"))


@pytest.mark.anyio
async def test_the_document_describes_the_running_shop(nats_url: str) -> None:
    async with running_shop(nats_url) as shop:
        transport = httpx.ASGITransport(app=shop.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            spec = (await client.get("/openapi.json")).json()
    check_document(spec)
    paths = spec["paths"]
    get = paths["/products/{id}"]["get"]
    assert get["parameters"] == [
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"minimum": 1, "title": "Id", "type": "integer"},
        }
    ]
    listing = paths["/products"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"max_price_cents", "in_stock"}
    assert all(p["in"] == "query" and not p["required"] for p in listing["parameters"])
    quote = paths["/quotes"]["post"]
    assert quote["requestBody"]["required"] is True
    body = quote["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["product_id", "quantity"]
    place = paths["/orders/place"]["post"]  # the default route, beside GET /orders/{id}
    assert place["responses"]["200"]["content"]["application/json"]["schema"]["title"] == "Order"
    assert paths["/orders/{id}"]["get"]["parameters"][0]["schema"]["pattern"]
    assert "default" in quote["responses"]
    assert "/busy/hold" in paths


def test_schema_names_do_not_collide_across_services() -> None:
    def info(name: str, title: str, field: str) -> Any:
        schema = {
            "$defs": {"Thing": {"type": "object", "properties": {field: {"type": "string"}}}},
            "$ref": "#/$defs/Thing",
            "title": title,
        }

        ep = SimpleNamespace(
            name="make",
            metadata={
                "natsmesh.request_schema": json.dumps(schema),
                "natsmesh.response_schema": "not json",
            },
        )
        return SimpleNamespace(
            name=name, version="1.0.0", description=f"the {name}", is_mesh=True, endpoints=[ep]
        )

    services = {n: service_doc([info(n, "T", field)]) for n, field in (("a", "x"), ("b", "y"))}
    routes = (HttpRoute(method="GET", path="/a/{id}", target="a.make"),)
    spec = build({k: v for k, v in services.items() if v is not None}, Router(routes))
    check_document(spec)
    schemas = spec["components"]["schemas"]
    assert schemas["Thing"]["properties"] == {"x": {"type": "string"}}
    assert schemas["b.Thing"]["properties"] == {"y": {"type": "string"}}
    # an unreadable schema is "any JSON", never an error
    ok = spec["paths"]["/a/make"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {}


@pytest.mark.anyio
async def test_schemathesis_finds_no_server_error(nats_url: str, tmp_path: Path) -> None:
    port = free_port()
    with Proc("up", "--port", str(port), nats_url=nats_url) as proc:
        await anyio.to_thread.run_sync(lambda: proc.wait_ready(60))
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--no-color",
        ]
        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                command, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
            )
        )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout


@pytest.mark.anyio
async def test_a_micro_service_without_schemas_is_any_json(nats_url: str) -> None:
    @service("plain", version="0.1.0")
    class Plain:
        @endpoint
        async def take(self, value: Any) -> Any:
            return value

    async with running_shop(nats_url) as shop, ServiceRunner(Plain, nats=shop.url):
        shop.app.directory.scan_ttl = 0
        transport = httpx.ASGITransport(app=shop.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.post("/plain/take", json=[1, "two"])).json() == [1, "two"]
            spec = (await client.get("/openapi.json")).json()
    check_document(spec)
    assert "/plain/take" in spec["paths"]
