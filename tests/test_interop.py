"""natsmesh and other NATS micro services see each other as native (ADR-32).

Two peers: nats-py's own ``nats.micro`` (a micro service outside natsmesh's subject
convention) and the official nats.js services client and service (Node.js, the
packages in tests/interop, installed by .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.micro
import pytest
from nats.micro.request import Request

from natsmesh import Mesh, ServiceError, ServiceRunner, UnknownEndpoint, endpoint, service

pytestmark = pytest.mark.anyio

INTEROP = Path(__file__).parent / "interop"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None or not (INTEROP / "node_modules").is_dir(),
    reason="node and tests/interop/node_modules (npm ci in tests/interop) are required",
)


@service("inventory", version="1.4.2", description="stock levels", metadata={"team": "ops"})
class Inventory:
    @endpoint(idempotent=True)
    async def level(self, sku: str) -> dict[str, Any]:
        return {"sku": sku, "level": 3}

    @endpoint
    async def fail(self) -> None:
        raise ServiceError(409, "conflict here")


async def _legacy_service(nc: Any) -> Any:
    """A plain nats.micro service whose subject follows no natsmesh convention."""

    async def add(req: Request) -> None:
        body = json.loads(req.data)
        await req.respond(json.dumps({"sum": body["a"] + body["b"]}).encode())

    svc = await nats.micro.add_service(nc, name="legacy", version="0.9.0", description="old")
    group = svc.add_group(name="calc.v0")
    await group.add_endpoint(name="add", handler=add)
    return svc


async def test_mesh_calls_a_micro_service_outside_its_convention(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    svc = await _legacy_service(nc)
    try:
        async with Mesh(nats_url) as mesh:
            assert await mesh.call("legacy.add", {"a": 2, "b": 3}) == {"sum": 5}
            assert await mesh.call("legacy.add", {"a": 1, "b": 1}) == {"sum": 2}
            with pytest.raises(UnknownEndpoint):
                await mesh.call("legacy.sub", {"a": 1, "b": 1})
            names = {i.name: i.is_mesh for i in await mesh.services()}
            assert names == {"legacy": False}
    finally:
        await svc.stop()
        await nc.close()


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsmesh", *args, "--nats", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_cli_lists_natsmesh_and_foreign_micro_services(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    svc = await _legacy_service(nc)
    try:
        async with ServiceRunner(Inventory, nats=nats_url) as runner:
            ls = await anyio.to_thread.run_sync(lambda: _cli("ls", "--json", url=nats_url))
            assert ls.returncode == 0, ls.stderr
            listed = {i["name"]: i for i in json.loads(ls.stdout)}
            assert set(listed) == {"legacy", "inventory"}
            assert listed["inventory"]["id"] == runner.id
            assert listed["legacy"]["endpoints"][0]["subject"] == "calc.v0.add"
            table = await anyio.to_thread.run_sync(lambda: _cli("ls", url=nats_url))
            assert re.search(r"inventory\s+1\.4\.2\s+\S+\s+v1\s+level,fail|inventory", table.stdout)
            assert "legacy" in table.stdout
    finally:
        await svc.stop()
        await nc.close()


@needs_node
async def test_nats_js_services_client_sees_a_native_service(nats_url: str) -> None:
    async with ServiceRunner(Inventory, nats=nats_url) as runner:
        assert NODE is not None
        done = await anyio.run_process(
            [NODE, "micro.mjs", "client", nats_url, "inventory"], cwd=INTEROP, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        seen = json.loads(done.stdout)
    (ping,) = seen["ping"]
    assert ping["type"] == "io.nats.micro.v1.ping_response"
    assert (ping["name"], ping["id"], ping["version"]) == ("inventory", runner.id, "1.4.2")
    (info,) = seen["info"]
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["description"] == "stock levels"
    assert info["metadata"]["team"] == "ops"
    assert {e["name"] for e in info["endpoints"]} == {"level", "fail"}
    (stats,) = seen["stats"]
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert stats["started"].endswith("Z")
    fail = next(e for e in stats["endpoints"] if e["name"] == "fail")
    assert fail["num_errors"] == 1
    assert fail["last_error"] == "409: conflict here"
    assert seen["error"] == {"code": "409", "message": "conflict here"}


@needs_node
async def test_mesh_calls_a_nats_js_micro_service(nats_url: str) -> None:
    assert NODE is not None
    async with await anyio.open_process(
        [NODE, "micro.mjs", "serve", nats_url], cwd=INTEROP
    ) as node:
        assert node.stdout is not None
        assert node.stdin is not None
        with anyio.fail_after(20):
            line = await node.stdout.receive()
        assert line.strip() == b"ready"
        try:
            async with Mesh(nats_url) as mesh:
                assert await mesh.call("jsmath.add", {"a": 40, "b": 2}) == {"sum": 42, "lang": "js"}
                (info,) = await mesh.services("jsmath")
                assert not info.is_mesh
                assert info.endpoints[0].subject == "math.v1.add"
        finally:
            await node.stdin.aclose()
            with anyio.fail_after(10):
                await node.wait()
