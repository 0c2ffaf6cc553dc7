"""The dashboard over a real socket (uvicorn): pages, API, events, tap, security.

A real nats-server, a real service, the real app served by uvicorn; requests by httpx.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from procs import Proc
from services import Echo, Item

from natsmesh import Mesh, ServiceRunner, dashboard
from natsmesh.cli._observe import authorizer

pytestmark = pytest.mark.anyio

OPS_KEY = "ops-key-0123456789"


@asynccontextmanager
async def _served(nats_url: str, **options: Any) -> AsyncIterator[str]:
    sock = dashboard.bind("127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(functools.partial(dashboard.run, nats_url, sock, **options))
        yield url
        tg.cancel_scope.cancel()


async def _events(client: httpx.AsyncClient, path: str) -> AsyncIterator[tuple[str, Any]]:
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                yield kind, json.loads(line[6:])


async def test_pages_api_and_metrics_of_a_live_mesh(nats_url: str) -> None:
    async with (
        ServiceRunner(Echo, nats=nats_url),
        Mesh(nats_url, name="caller") as mesh,
        _served(nats_url) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        page = await client.get("/")
        assert page.status_code == 200
        assert "natsmesh" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "connect-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        for asset in ("/static/app.js", "/static/app.css"):
            assert (await client.get(asset)).status_code == 200
        # Calls until the events stream shows the edge caller → echo.
        with anyio.fail_after(20):
            async for kind, data in _events(client, "/api/v1/events"):
                assert kind == "update"
                edges = {(e["source"], e["target"]): e for e in data["topology"]["edges"]}
                if ("caller", "echo") in edges and edges["caller", "echo"]["rps"] > 0:
                    break
                for i in range(20):
                    await mesh.call("echo.echo", Item(id=i, name="x"))
        assert edges["caller", "echo"]["failing"] is False
        services = (await client.get("/api/v1/services")).json()
        echo = next(s for s in services if s["name"] == "echo")
        assert echo["count"] == 1
        assert echo["instances"][0]["version"] == "1.0.0"
        page = (await client.get("/api/v1/services/echo")).json()
        assert {e["name"] for e in page["endpoints"]} >= {"echo", "slow", "whoami"}
        assert "properties" in json.loads(
            next(e for e in page["endpoints"] if e["name"] == "echo")["request_schema"]
        )
        assert page["callers"][0]["caller"] == "caller"
        metrics = (await client.get("/metrics")).text
        assert 'natsmesh_request_total{callee="echo",caller="caller",endpoint="echo"' in metrics
        assert "natsmesh_response_latency_ms_bucket{" in metrics
        assert 'classification="success"' in metrics


async def test_the_tap_streams_samples_while_open(nats_url: str) -> None:
    async with (
        ServiceRunner(Echo, nats=nats_url),
        Mesh(nats_url, name="caller") as mesh,
        _served(nats_url) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        sample: dict[str, Any] = {}
        with anyio.fail_after(15):
            async for kind, data in _events(client, "/api/v1/tap/echo"):
                if kind == "sample":
                    sample = data
                    break
                for i in range(5):
                    await mesh.call("echo.echo", Item(id=i, name="x"))
        assert sample["endpoint"] == "echo"
        assert sample["caller"] == "caller"
        assert sample["status"] == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", "/api/v1/services", {}, 405),
        ("DELETE", "/", {}, 405),
        ("GET", "/" + "a" * 600, {}, 414),
        ("GET", "/api/v1/services", {"host": "evil.example"}, 421),  # DNS rebinding
        ("GET", "/api/v1/services/a.b", {}, 404),
        ("GET", "/api/v1/services/%2e%2e", {}, 404),
        ("GET", "/api/v1/services/nosuch", {}, 404),
        ("GET", "/api/v1/tap/*", {}, 404),
        ("GET", "/api/v1/tap/a>", {}, 404),
        ("GET", "/static/../pyproject.toml", {}, 404),
        ("GET", "/static/", {}, 404),
        ("GET", "/static/__init__.py", {}, 404),
        ("GET", "/nothing", {}, 404),
    ],
)
async def test_bad_requests_are_refused(
    nats_url: str, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    async with _served(nats_url) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == status
        assert response.headers["cache-control"] == "no-store"


async def test_an_auth_file_guards_everything_but_the_page(nats_url: str, tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.toml"
    digest = hashlib.sha256(OPS_KEY.encode()).hexdigest()
    auth_file.write_text(
        f'[api_keys.ops]\nsha256 = "{digest}"\n\n[[rules]]\npaths = ["/**"]\nallow = ["key:ops"]\n'
    )
    authorize = authorizer(str(auth_file))
    async with (
        _served(nats_url, authorize=authorize) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await client.get("/")).status_code == 200  # the page holds no data
        assert (await client.get("/static/app.js")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        for path in ("/api/v1/services", "/metrics", "/api/v1/events", "/api/v1/tap/echo"):
            assert (await client.get(path)).status_code == 401, path
            bad = await client.get(path, headers={"x-api-key": "wrong-key-000000"})
            assert bad.status_code == 401, path
        for bad_value in ("", "a" * 600, "key with spaces"):
            response = await client.get("/metrics", headers={"x-api-key": bad_value})
            assert response.status_code == 401
        ok = await client.get("/api/v1/services", headers={"x-api-key": OPS_KEY})
        assert ok.status_code == 200


def test_exposing_the_dashboard_needs_an_auth_file(nats_url: str) -> None:
    with Proc("dashboard", "--host", "0.0.0.0", "--port", "0", nats_url=nats_url) as proc:
        assert proc.popen.wait(30) == 2
        assert "--auth" in "".join(proc.stderr_lines)


def test_natsmesh_dashboard_serves_on_loopback(nats_url: str) -> None:
    with Proc("dashboard", "--port", "0", nats_url=nats_url) as proc:
        line = proc.wait_ready()
        assert line.startswith("natsmesh dashboard: http://127.0.0.1:")
        url = line.split()[2]
        assert httpx.get(url + "/healthz").status_code == 200
        assert proc.terminate() == 0
