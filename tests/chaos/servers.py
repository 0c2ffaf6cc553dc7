"""NATS servers for the chaos scenarios, run from the repository's deploy/ configs unchanged.

Each server is ``nats-server -c deploy/<file>.conf`` (the venv's binary) with its
name, ports, routes, gateways and leaf remotes in ``NATSMESH_*`` environment
variables, as an operator runs them. Ports are free loopback ports; a server that
loses a race for one is started again on others.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from chaos.procs import BIN, ROOT, Proc, clean_env
from natsmesh.testing import free_port

DEPLOY = ROOT / "deploy"
NATS_SERVER = BIN / "nats-server"


@dataclass
class NatsNode:
    """One nats-server: its config file, its environment, and its process while it runs."""

    name: str
    conf: str  # a file under deploy/
    zone: str
    home: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None
    netns: str | None = None  # run inside this network namespace (ip netns exec)
    starts: int = 0

    def __post_init__(self) -> None:
        for kind in ("client", "cluster", "monitor", "gateway", "leaf"):
            self.ports.setdefault(kind, free_port(self.host) if self.netns is None else 0)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.ports['client']}"

    @property
    def route_url(self) -> str:
        return f"nats://{self.host}:{self.ports['cluster']}"

    @property
    def gateway_url(self) -> str:
        return f"nats://{self.host}:{self.ports['gateway']}"

    @property
    def leaf_url(self) -> str:
        return f"nats-leaf://{self.host}:{self.ports['leaf']}"

    @property
    def monitor(self) -> str:
        return f"http://{self.host}:{self.ports['monitor']}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def env(self) -> dict[str, str]:
        return clean_env(
            {
                "NATSMESH_SERVER_NAME": self.name,
                "NATSMESH_ZONE": self.zone,
                "NATSMESH_HOST": self.host,
                "NATSMESH_PORT": str(self.ports["client"]),
                "NATSMESH_CLUSTER_PORT": str(self.ports["cluster"]),
                "NATSMESH_MONITOR_PORT": str(self.ports["monitor"]),
                "NATSMESH_GATEWAY_PORT": str(self.ports["gateway"]),
                "NATSMESH_LEAF_PORT": str(self.ports["leaf"]),
                "NATSMESH_STORE_DIR": str(self.home / "store"),
                **self.extra_env,
            }
        )

    def start(self, log_dir: Path) -> Proc:
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [str(NATS_SERVER), "-c", str(DEPLOY / self.conf)]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.starts += 1
        name = self.name if self.starts == 1 else f"{self.name}.{self.starts}"
        self.proc = Proc(
            name, argv, env=self.env(), log_dir=log_dir, ready=r"Server is ready", cwd=self.home
        )
        return self.proc

    async def wait_ready(self) -> None:
        assert self.proc is not None
        await self.proc.wait_ready(30)

    def get(self, path: str) -> Any:
        """GET a monitoring endpoint (JSON); raises OSError when the server does not answer."""
        with urllib.request.urlopen(f"{self.monitor}{path}", timeout=2) as reply:  # noqa: S310
            return json.loads(reply.read())

    async def varz(self) -> dict[str, Any]:
        result: dict[str, Any] = await anyio.to_thread.run_sync(self.get, "/varz")
        return result

    async def healthy(self) -> bool:
        """/healthz says 200: the server is up and JetStream (where enabled) is current."""
        try:
            await anyio.to_thread.run_sync(self.get, "/healthz")
        except OSError:
            return False
        return True


def routes_env(nodes: list[NatsNode]) -> str:
    return json.dumps([n.route_url for n in nodes])


def urls(nodes: list[NatsNode]) -> str:
    """A client's server list, comma-separated (NATS_URL)."""
    return ",".join(n.url for n in nodes)
