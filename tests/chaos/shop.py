"""The mesh most scenarios run: a NATS cluster, controllers, catalog instances, loaded clients.

``catalog`` runs as separate ``natsmesh serve`` processes (each can be frozen,
killed or drained alone) behind a route table applied with ``natsmesh routes
apply``; the callers are ``Mesh`` clients in the scenario's process, each with an
open-loop load of ``catalog.get`` (idempotent) and, where asked, ``catalog.put``
(not idempotent: a timeout is never retried).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc
from nats.aio.client import Client as NATS

from chaos.lab import Lab
from chaos.load import Load, mesh_call, settle
from chaos.procs import Proc
from chaos.servers import NatsNode, urls
from natsmesh import Mesh

CATALOG = "chaos.services:Catalog"


def catalog_routes(
    *,
    balancer: str = "p2c",
    change: int = 0,
    zones: tuple[str, ...] = (),
    service: str = "catalog",
) -> str:
    """The catalog's route table (as examples/routes.toml has it, with a 3 s budget).

    ``change`` makes a new revision that changes nothing that matters: the timeout
    moves by a millisecond.
    """
    zone_line = f"zones = {list(zones)!r}".replace("'", '"') if zones else ""
    return f"""
[services.{service}]
timeout = {3 + change / 1000}
load_balancer = "{balancer}"
{zone_line}

[services.{service}.retries]
attempts = 3
per_try_timeout = 0.5
retry_on = ["no_responders", "overloaded", "timeout", "unavailable"]
backoff = 0.02
max_backoff = 0.25
budget_ratio = 0.2
budget_min_per_second = 10

[services.{service}.hedging]
percentile = 95
max_ratio = 0.05

[services.{service}.outlier]
consecutive_failures = 5
base_ejection = 30
max_ejection_percent = 50
"""


@dataclass
class Shop:
    lab: Lab
    nodes: list[NatsNode]
    servers: str
    instances: list[Proc] = field(default_factory=list)
    controllers: list[Proc] = field(default_factory=list)
    meshes: dict[str, Mesh] = field(default_factory=dict)
    loads: list[Load] = field(default_factory=list)
    routes: str = ""
    changes: int = 0

    @property
    def pids(self) -> set[str]:
        return {str(p.pid) for p in self.instances if p.running}

    async def start_instance(self, index: int, *, target: str = CATALOG) -> Proc:
        proc = await self.lab.serve(f"catalog-{index}", target, self.servers)
        if index < len(self.instances):
            self.instances[index] = proc
        else:
            self.instances.append(proc)
        return proc

    async def change_routes(self, *, balancer: str = "p2c") -> float:
        """Apply a new revision of the catalog's routes; seconds until every client has it."""
        self.changes += 1
        text = catalog_routes(change=self.changes, balancer=balancer)
        done, _ = await self.lab.apply_until_ok(text, self.servers)
        return await self.lab.converge(
            "catalog", self.meshes, self.servers, since=time.monotonic() - done.seconds
        )

    async def warm(self) -> None:
        """Until every instance has served every client, and then some more calls."""
        now = time.monotonic()
        for load in self.loads:
            if not load.name.endswith("-put"):
                await load.served_by(self.pids, since=now, within=60)
        await settle(self.loads)

    def stop_loads(self) -> None:
        for load in self.loads:
            load.stop()


async def start_shop(
    lab: Lab,
    nodes: list[NatsNode],
    *,
    balancer: str = "p2c",
    instances: int = 3,
    controllers: int = 2,
) -> Shop:
    """Controllers, the catalog's routes applied, and its instances, on ``nodes``."""
    shop = Shop(lab, nodes, urls(nodes), routes=catalog_routes(balancer=balancer))
    for name in ("a", "b")[:controllers]:
        shop.controllers.append(await lab.controller(f"controller-{name}", shop.servers))
    if controllers:
        await lab.apply_until_ok(shop.routes, shop.servers)
    for i in range(instances):
        await shop.start_instance(i)
    return shop


@contextlib.asynccontextmanager
async def loaded(
    shop: Shop, clients: Mapping[str, str | NATS], *, rate: float = 100.0, puts: float = 0.0
) -> AsyncIterator[Shop]:
    """Each client (a Mesh on a URL list or a connection) under load; stopped on leaving.

    ``puts`` adds an open-loop load of non-idempotent calls at that rate per client.
    """
    async with contextlib.AsyncExitStack() as stack:
        for name, nats in clients.items():
            shop.meshes[name] = await stack.enter_async_context(Mesh(nats, name=name))
        async with anyio.create_task_group() as tg:
            for name, mesh in shop.meshes.items():
                shop.loads.append(Load(name, mesh_call(mesh, "catalog.get", {"id": 1}), rate=rate))
                if puts:
                    put = mesh_call(mesh, "catalog.put", {"id": 1})
                    shop.loads.append(Load(f"{name}-put", put, rate=puts))
            for load in shop.loads:
                tg.start_soon(load.run)
            try:
                yield shop
            finally:
                shop.stop_loads()


@contextlib.asynccontextmanager
async def running_shop(
    lab: Lab,
    *,
    balancer: str = "p2c",
    instances: int = 3,
    controllers: int = 2,
    clients: tuple[str, ...] = ("load-a",),
    rate: float = 100.0,
    puts: float = 0.0,
) -> AsyncIterator[Shop]:
    """A 3-server cluster and the shop on it, under load (see :func:`loaded`)."""
    nodes = await lab.cluster("eu-west", 3)
    shop = await start_shop(
        lab, nodes, balancer=balancer, instances=instances, controllers=controllers
    )
    async with loaded(shop, dict.fromkeys(clients, shop.servers), rate=rate, puts=puts):
        yield shop
