"""The documented secured deployment, for real: the repo's nats.conf on a 3-server
cluster with TLS for clients and routes, the authorization compiled from
examples/policy.toml, and the example shop running under it, each component as
its own identity with its own client certificate.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import trustme
from waits import eventually, eventually_sync, leading

from examples.shop import models
from examples.shop.catalog import Catalog
from examples.shop.orders import Orders
from examples.shop.pricing import PricingV1, PricingV2
from natsmesh import Mesh, ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.security._auth_files import compile_policy
from natsmesh.testing import EmbeddedNats, free_port
from natsmesh.transport._credentials import Credentials
from natsmesh.transport._transport import NATS, connect

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
IDENTITIES = ("catalog", "pricing", "orders", "gateway", "controller", "admin")


@dataclass(frozen=True)
class Deployment:
    urls: list[str]
    secrets: Path

    def environment(self, identity: str) -> dict[str, str]:
        """What an operator exports to run as ``identity``: its .env file plus TLS."""
        env = dict(
            line.split("=", 1)
            for line in (self.secrets / f"{identity}.env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        return {
            **env,
            "NATS_URL": ",".join(self.urls),
            "NATS_CA": str(self.secrets / "ca.pem"),
            "NATS_CERT": str(self.secrets / f"{identity}.pem"),
            "NATS_KEY": str(self.secrets / f"{identity}.key"),
        }

    async def connect(self, identity: str) -> NATS:
        env = self.environment(identity)
        return await connect(env["NATS_URL"], name=identity, credentials=Credentials.from_env(env))


def _secrets(out: Path) -> None:
    compile_policy(ROOT / "examples" / "policy.toml", out)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(out / "server.pem"))
    server.private_key_pem.write_to_path(str(out / "server.key"))
    for identity in IDENTITIES:
        cert = ca.issue_cert(f"{identity}@natsmesh.test")
        cert.cert_chain_pems[0].write_to_path(str(out / f"{identity}.pem"))
        cert.private_key_pem.write_to_path(str(out / f"{identity}.key"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("deployment")
    _secrets(tmp / "secrets")
    cluster_ports = [free_port() for _ in range(3)]
    routes = json.dumps([f"tls://127.0.0.1:{p}" for p in cluster_ports])
    servers = []
    for i, cluster_port in enumerate(cluster_ports, 1):
        home = tmp / f"nats-{i}"
        home.mkdir()
        # The repo's file as an operator deploys it: beside its secrets/ directory.
        shutil.copy(ROOT / "nats.conf", home / "nats.conf")
        (home / "secrets").symlink_to(tmp / "secrets")
        servers.append(
            EmbeddedNats(
                config_file=home / "nats.conf",
                cwd=home,
                env={"NATSMESH_SERVER_NAME": f"nats-{i}", "NATSMESH_ROUTES": routes},
                extra_args=["--cluster", f"nats://127.0.0.1:{cluster_port}"],
                ready_timeout=30,
            )
        )
    try:
        # One by one, from this thread: a server dies with the thread that started it
        # (PR_SET_PDEATHSIG), and each reports ready before its routes are up.
        for server in servers:
            server.start()
        for server in servers:  # as an operator would: until JetStream has its leader
            _wait_healthy(server)
        yield Deployment([s.url.replace("nats://", "tls://") for s in servers], tmp / "secrets")
    finally:
        for server in servers:
            server.stop()


def _wait_healthy(server: EmbeddedNats) -> None:
    health = f"{server.monitor_url}/healthz"  # http://127.0.0.1:<port>, ours

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=2) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except urllib.error.HTTPError as error:  # 503 until JetStream has its leader
            error.close()
            return False

    eventually_sync(healthy, within=30, what=f"{health} 200", retry_on=(OSError,))


def test_the_repo_nats_conf_validates_with_the_compiled_authorization(
    deployment: Deployment,
) -> None:
    from natsmesh.ops._binary import find_nats_server

    done = subprocess.run(
        [find_nats_server(), "-c", "nats.conf", "-t"],
        cwd=deployment.secrets.parent / "nats-1",
        env={
            **os.environ,
            "NATSMESH_SERVER_NAME": "check",
            "NATSMESH_ROUTES": '["tls://127.0.0.1:1"]',
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr + done.stdout


async def _cli(deployment: Deployment, identity: str, *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    done = await anyio.run_process(
        [sys.executable, "-m", "natsmesh", *args],
        env={**clean, **deployment.environment(identity)},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@pytest.fixture
async def shop(deployment: Deployment) -> AsyncIterator[Deployment]:
    # One connection per instance, as `natsmesh serve` runs them: with allow_responses
    # a connection may answer a request once, so two instances sharing one could not
    # both answer a $SRV discovery request.
    instances = [
        ("catalog", Catalog),
        ("pricing", PricingV1),
        ("pricing", PricingV2),
        ("orders", Orders),
    ]
    connections = [await deployment.connect(identity) for identity, _ in instances]
    control = await deployment.connect("controller")
    try:
        async with contextlib.AsyncExitStack() as stack:
            controller = await stack.enter_async_context(Controller(control, replicas=3))
            for nc, (_, cls) in zip(connections, instances, strict=True):
                await stack.enter_async_context(ServiceRunner(cls, nats=nc))
            await leading(controller, within=20)
            await eventually(
                lambda: set(controller.registry.services()) >= {"catalog", "pricing", "orders"},
                within=20,
            )
            yield deployment
    finally:
        for nc in [*connections, control]:
            await nc.close()


async def test_the_example_shop_runs_under_its_policy_with_tls(shop: Deployment) -> None:
    applied = await _cli(shop, "admin", "routes", "apply", str(ROOT / "examples" / "routes.toml"))
    assert "revision" in applied.lower() or "applied" in applied.lower()
    gateway = await shop.connect("gateway")
    try:
        async with Mesh(gateway, name="gateway", kind="gateway") as mesh:
            order = await mesh.call(
                "orders.place",
                models.OrderRequest(product_id=1, quantity=2, customer="ada"),
                response=models.Order,
                timeout=10,
            )
            assert order.quantity == 2
            assert order.total_cents > 0
    finally:
        await gateway.close()
    listed = json.loads(await _cli(shop, "admin", "ls", "--json"))
    assert {"catalog", "pricing", "orders"} <= {row["name"] for row in listed}
