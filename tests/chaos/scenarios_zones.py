"""Beyond one cluster: a supercluster of two zones (deploy/supercluster.conf) and a leaf
site (deploy/hub.conf, deploy/site.conf).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator

import anyio
from waits import eventually

from chaos.figures import Figures
from chaos.lab import Lab
from chaos.load import Load, Sample, mesh_call, p99, settle
from chaos.proxy import Proxy
from chaos.servers import NatsNode, urls
from chaos.shop import CATALOG, catalog_routes
from natsmesh import Mesh

ZONES = ("eu-west", "eu-central")


def _share(samples: list[Sample], pids: set[str]) -> float:
    """The share of successful calls served by ``pids``."""
    ok = [s for s in samples if s.ok]
    return sum(s.served in pids for s in ok) / len(ok) if ok else 0.0


async def supercluster(lab: Lab) -> Figures:
    """Two zones joined by gateways: calls stay in their zone and move when it empties."""
    figures = Figures("supercluster")
    west = lab.make_nodes("eu-west", 3, conf="supercluster.conf", prefix="west")
    central = lab.make_nodes("eu-central", 2, conf="supercluster.conf", prefix="central")
    gateways = json.dumps(
        [
            {"name": "eu-west", "urls": [n.gateway_url for n in west]},
            {"name": "eu-central", "urls": [n.gateway_url for n in central]},
        ]
    )
    for node in [*west, *central]:
        node.extra_env["NATSMESH_GATEWAYS"] = gateways
    await lab.start_all([*west, *central])
    servers = {"eu-west": urls(west), "eu-central": urls(central)}
    # The first controller creates the bucket (R3) in its own zone: the one with 3 servers.
    controllers = [await lab.controller(f"controller-{z}", servers[z]) for z in ZONES]
    routes = catalog_routes(zones=ZONES)
    await lab.apply_until_ok(routes, servers["eu-central"])  # across the gateway
    instances: dict[str, list[str]] = {z: [] for z in ZONES}
    for zone in ZONES:
        for i in range(2):
            proc = await lab.serve(f"catalog-{zone}-{i}", CATALOG, servers[zone])
            instances[zone].append(str(proc.pid))
    async with contextlib.AsyncExitStack() as stack:
        loads: dict[str, Load] = {}
        for zone in ZONES:
            for mode in ("p2c", "queue"):
                name = f"{zone}-{mode}"
                mesh = await stack.enter_async_context(
                    Mesh(servers[zone], name=name, tables=mode == "p2c")
                )
                loads[name] = Load(name, mesh_call(mesh, "catalog.get", {"id": 1}), rate=100)
        async with anyio.create_task_group() as tg:
            for load in loads.values():
                tg.start_soon(load.run)
            warm = time.monotonic()
            for name, load in loads.items():
                await load.served_by(set(instances[name.rsplit("-", 1)[0]]), since=warm)
            await settle(loads.values())
            for name, load in loads.items():
                own = set(instances[name.rsplit("-", 1)[0]])
                figures.notes[f"{name} in zone"] = _share(load.window(warm), own)
            lab.mark_rss()
            # Every instance of eu-west stops (SIGTERM: each drains and leaves).
            fault_start = time.monotonic()
            west_procs = [lab.roles[f"catalog-eu-west-{i}"] for i in range(2)]
            for proc in west_procs:
                proc.signal(signal.SIGTERM)
            for proc in west_procs:
                await proc.wait(30)
            stopped = time.monotonic()
            await settle([loads["eu-west-p2c"], loads["eu-west-queue"]])
            for name in ("eu-west-p2c", "eu-west-queue"):
                figures.notes[f"{name} to eu-central while out"] = _share(
                    loads[name].window(stopped), set(instances["eu-central"])
                )
            back = time.monotonic()
            instances["eu-west"] = [
                str((await lab.serve(f"catalog-eu-west-{i}", CATALOG, servers["eu-west"])).pid)
                for i in range(2)
            ]
            for name in ("eu-west-p2c", "eu-west-queue"):  # and the calls come home
                await loads[name].served_by(set(instances["eu-west"]), since=back, within=60)
            fault_end = time.monotonic()
            # The control plane across zones: the leader in eu-west dies; eu-central's takes
            # over and writes to the bucket in eu-west across the gateway.
            controllers[0].kill()
            done, _ = await lab.apply_until_ok(
                catalog_routes(zones=ZONES, change=1), servers["eu-central"]
            )
            figures.notes["takeover from eu-central s"] = time.monotonic() - fault_end
            figures.converge = await lab.converge(
                "catalog",
                ["eu-west-p2c", "eu-central-p2c"],
                servers["eu-central"],
                since=time.monotonic() - done.seconds,
            )
            figures.rss = lab.rss_figures()
            for load in loads.values():
                load.stop()
    figures.add(list(loads.values()), fault=(fault_start, fault_end), since=lab.steady)
    return figures


# -- a leaf site ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _proxies(hub: list[NatsNode]) -> AsyncIterator[list[Proxy]]:
    async with anyio.create_task_group() as tg:
        proxies = [Proxy(node.ports["leaf"]) for node in hub]
        for proxy in proxies:
            await tg.start(proxy.serve)
        yield proxies
        tg.cancel_scope.cancel()


async def _leaf_up(site: NatsNode, *, within: float = 30.0) -> None:
    async def up() -> bool:
        return bool((await anyio.to_thread.run_sync(site.get, "/leafz")).get("leafnodes"))

    what = "the site's leaf connection"
    await eventually(up, within=within, every=0.1, what=what, retry_on=(OSError,))


async def leaf(lab: Lab) -> Figures:
    """A site joined to the hub by a leaf connection; the link dropped and restored."""
    figures = Figures("leaf-site")
    hub = lab.make_nodes("hub", 3, conf="hub.conf", prefix="hub")
    async with _proxies(hub) as proxies:
        for node, proxy in zip(hub, proxies, strict=True):
            # The hub tells the site every member's leaf address: the proxies' (see hub.conf).
            node.extra_env["NATSMESH_LEAF_ADVERTISE"] = f"127.0.0.1:{proxy.port}"
        await lab.start_all(hub)
        site = NatsNode("site-1", "site.conf", "", lab.home / "site-1")
        site.extra_env["NATSMESH_HUB_URLS"] = json.dumps(
            [f"nats-leaf://127.0.0.1:{p.port}" for p in proxies]
        )
        await lab.start_node(site)
        await _leaf_up(site)
        return await _leaf_load(lab, figures, urls(hub), site, proxies)


async def _leaf_load(
    lab: Lab, figures: Figures, hub: str, site: NatsNode, proxies: list[Proxy]
) -> Figures:
    await lab.controller("controller", hub)
    routes = catalog_routes() + catalog_routes(service="inventory")
    await lab.apply_until_ok(routes, hub)
    pids = {
        "catalog": {str((await lab.serve(f"catalog-{i}", CATALOG, hub)).pid) for i in range(2)},
        "inventory": {
            str((await lab.serve(f"inventory-{i}", "chaos.services:Inventory", site.url)).pid)
            for i in range(2)
        },
    }
    flows = {  # name: (caller's side, service)
        "hub>hub": (hub, "catalog"),
        "site>site": (site.url, "inventory"),
        "site>hub": (site.url, "catalog"),
        "hub>site": (hub, "inventory"),
    }
    async with contextlib.AsyncExitStack() as stack:
        meshes = {
            side: await stack.enter_async_context(Mesh(side, name=f"{name}-client"))
            for side, name in ((hub, "hub"), (site.url, "site"))
        }
        loads = {
            name: Load(name, mesh_call(meshes[side], f"{svc}.get", {"id": 1}), rate=50)
            for name, (side, svc) in flows.items()
        }
        async with anyio.create_task_group() as tg:
            for load in loads.values():
                tg.start_soon(load.run)
            warm = time.monotonic()
            for name, load in loads.items():
                await load.served_by(pids[flows[name][1]], since=warm, within=60)
            await settle(loads.values())
            lab.mark_rss()
            fault_start = time.monotonic()
            for proxy in proxies:
                proxy.drop()
            await anyio.sleep(15.0 if lab.long else 6.0)  # the link stays down this long
            for proxy in proxies:
                proxy.restore()
            restored = time.monotonic()
            for name in ("site>hub", "hub>site"):
                load = loads[name]
                await load.until(
                    lambda load=load: load.samples[-1].ok and load.samples[-1].start > restored,
                    within=60,
                )
            fault_end = time.monotonic()
            # The site's control plane is the hub's: a change made there.
            changed = catalog_routes(change=1) + catalog_routes(service="inventory", change=1)
            done, _ = await lab.apply_until_ok(changed, hub)
            figures.converge = await lab.converge(
                "inventory", ["hub-client"], hub, since=time.monotonic() - done.seconds
            )
            # The site's callers cannot read the tables (see test_zones.py): what they applied.
            site_rows = [r for r in await lab.status(hub) if r["client"] == "site-client"]
            figures.notes["site tables applied"] = max((r["applied"] for r in site_rows), default=0)
            await settle(loads.values())
            figures.rss = lab.rss_figures()
            for load in loads.values():
                load.stop()
    _leaf_figures(figures, loads, lab.steady, (fault_start, restored, fault_end))
    return figures


def _leaf_figures(
    figures: Figures, loads: dict[str, Load], steady: float, times: tuple[float, float, float]
) -> None:
    """Local flows: every failure counts. Cross-site flows: from the drop on, calls are
    expected to fail until the link is back, fast and as no responders (a call in flight
    at the drop may wait out a try, so from 0.1 s after it); a failure before counts."""
    down, restored, end = times
    local = [loads["hub>hub"], loads["site>site"]]
    figures.add(local, fault=(down, end), since=steady)
    outage: list[Sample] = []
    for name in ("site>hub", "hub>site"):
        load = loads[name]
        figures.sent += len(load.window(steady))
        before = load.failures(steady, down)
        figures.failed += len(before)
        figures.errors += [f"{name}: {s.served}" for s in before[:5]]
        figures.notes[f"{name} failed at the drop"] = len(load.failures(down, down + 0.1))
        outage += load.failures(down + 0.1, end)
        late = load.failures(restored, end)  # the link is up: until the interest is everywhere
        back = max((s.start + s.latency for s in late), default=restored)
        figures.notes[f"{name} back after s"] = back - restored
    figures.notes["cross-site failed while down"] = len(outage)
    figures.notes["cross-site failures"] = sorted({s.served for s in outage})
    figures.notes["cross-site failure p99 s"] = p99(outage)


SCENARIOS = {
    "supercluster": supercluster,
    "leaf-site": leaf,
}
