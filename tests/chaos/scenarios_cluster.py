"""Faults on a 3-server cluster with the KV at 3 replicas (deploy/cluster.conf).

Each scenario runs the shop (:mod:`chaos.shop`) under load, injects its fault,
lets it heal, applies a route change and times how long every client takes to
apply it, and returns its figures. The tests (``test_cluster.py``) assert on them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time

import anyio
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from waits import eventually

from chaos.figures import Figures
from chaos.lab import Lab
from chaos.load import Load, settle
from chaos.netns import Network
from chaos.servers import NATS_SERVER, NatsNode, urls
from chaos.shop import CATALOG, catalog_routes, loaded, running_shop, start_shop
from natsmesh.cli._control import APPLY_TIMEOUT

KV_STREAM = "KV_natsmesh"
#: What ``natsmesh routes apply`` asks the controller (its control subject).
APPLY_SUBJECT = "mesh._ctl.routes.apply"
#: The catalog's per-try timeout (chaos/shop.py).
PER_TRY = 0.5


def _split(loads: list[Load]) -> tuple[list[Load], list[Load]]:
    gets = [load for load in loads if not load.name.endswith("-put")]
    return gets, [load for load in loads if load.name.endswith("-put")]


def _puts(figures: Figures, puts: list[Load]) -> None:
    """The non-idempotent calls: never retried after a timeout, so counted apart."""
    figures.notes["put sent"] = sum(len(p.samples) for p in puts)
    figures.notes["put failed"] = sum(len(p.failures()) for p in puts)
    kinds = {s.served for p in puts for s in p.failures()}
    if kinds:
        figures.notes["put failures"] = sorted(kinds)


async def _stream_leader(js: JetStreamContext, *, within: float = 30.0) -> str:
    """The server holding the KV stream's leader (waits out an election)."""

    async def leader() -> str | None:
        info = await js.stream_info(KV_STREAM)
        return info.cluster.leader if info.cluster is not None else None

    # Any error (no leader to answer, a timeout) means "not yet" during an election.
    what = "a leader of the KV stream"
    return await eventually(leader, within=within, every=0.1, what=what, retry_on=(Exception,))


async def _stream_current(js: JetStreamContext, *, within: float = 60.0) -> float:
    """Seconds until the KV stream has a leader and every replica is current again."""
    started = time.monotonic()

    async def current() -> bool:
        cluster = (await js.stream_info(KV_STREAM)).cluster
        return bool(
            cluster is not None
            and cluster.leader
            and len(cluster.replicas or []) == 2
            and all(r.current for r in cluster.replicas or [])
        )

    what = "the KV stream's replicas current"
    await eventually(current, within=within, every=0.1, what=what, retry_on=(Exception,))
    return time.monotonic() - started


async def _apply_and_kill(url: str, text: str, node: NatsNode) -> dict[str, object]:
    """Send a route file to the controller, kill ``node`` as it is sent; the reply.

    No reply within the CLI's own wait is an outcome too, as ``natsmesh routes apply``
    reports it: core NATS delivers at most once, and a request on its way through the
    killed server to the controller is lost with it.
    """
    nc = await nats.connect(url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        await nc.publish(APPLY_SUBJECT, text.encode(), reply=inbox)
        await nc.flush()
        node.proc.kill()  # type: ignore[union-attr]
        try:
            msg = await sub.next_msg(timeout=APPLY_TIMEOUT + 5)
        except nats.errors.TimeoutError:
            return {"ok": False, "error": "no reply: the request was lost with the server"}
        reply: dict[str, object] = json.loads(msg.data)
        return reply
    finally:
        await nc.close()


async def kv_leader(lab: Lab) -> Figures:
    """kill -9 of the KV stream leader's server, under load, then again during routes apply."""
    figures = Figures("kv-leader-kill")
    async with running_shop(lab, clients=("load-a", "load-b")) as shop:
        await shop.warm()
        lab.mark_rss()
        nc = await nats.connect(
            servers=shop.servers.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        try:
            js = nc.jetstream(timeout=2)
            fault_start = time.monotonic()
            # 1. Under load: the data plane must not notice; the KV must come back writable.
            node = lab.nodes[await _stream_leader(js)]
            killed = time.monotonic()
            node.proc.kill()  # type: ignore[union-attr]
            shop.changes += 1
            text = catalog_routes(change=shop.changes)
            _, refused = await lab.apply_until_ok(text, shop.servers)
            figures.notes["kv writable after kill s"] = time.monotonic() - killed
            figures.notes["applies refused after kill"] = len(refused)
            figures.notes["restart s"] = await lab.restart(node)
            figures.notes["replicas current s"] = await _stream_current(js)
            # 2. During routes apply: the leader dies while the controller writes. The
            # request `natsmesh routes apply` sends, sent here so that the kill follows it
            # at once (a command's own start-up would put the kill before it).
            node = lab.nodes[await _stream_leader(js)]
            shop.changes += 1
            text = catalog_routes(change=shop.changes)
            applied_at = time.monotonic()
            survivor = next(n for n in shop.nodes if n is not node)
            reply = await _apply_and_kill(survivor.url, text, node)
            figures.notes["apply during kill"] = "ok" if reply.get("ok") else reply.get("error")
            if not reply.get("ok"):  # refused cleanly: apply again, as an operator would
                await lab.apply_until_ok(text, shop.servers)
            figures.converge = await lab.converge(
                "catalog", shop.meshes, shop.servers, since=applied_at
            )
            await lab.restart(node)
            await _stream_current(js)
            fault_end = time.monotonic()
            await settle(shop.loads)
        finally:
            await nc.close()
        figures.rss = lab.rss_figures()
    figures.add(shop.loads, fault=(fault_start, fault_end), since=lab.steady)
    return figures


async def controller_failover(lab: Lab) -> Figures:
    """kill -9 of the controller holding the lease: the standby takes over."""
    figures = Figures("controller-kill")
    async with running_shop(lab) as shop:
        await shop.warm()
        lab.mark_rss()
        nc = await nats.connect(servers=shop.servers.split(","))
        try:
            kv = await nc.jetstream().key_value("natsmesh")
            holder = json.loads((await kv.get("leader")).value or b"{}")["holder"]
        finally:
            await nc.close()
        ids = {p.ready_match.group(1): p for p in shop.controllers if p.ready_match}
        leader = ids[holder]
        fault_start = time.monotonic()
        leader.kill()
        shop.changes += 1
        done, refused = await lab.apply_until_ok(catalog_routes(change=shop.changes), shop.servers)
        figures.notes["takeover s"] = time.monotonic() - fault_start
        figures.notes["applies refused"] = len(refused)
        figures.converge = await lab.converge(
            "catalog", shop.meshes, shop.servers, since=time.monotonic() - done.seconds
        )
        fault_end = time.monotonic()
        await settle(shop.loads)
        figures.rss = lab.rss_figures()
    figures.add(shop.loads, fault=(fault_start, fault_end), since=lab.steady)
    return figures


async def freeze(lab: Lab, balancer: str) -> Figures:
    """SIGSTOP of one of three instances under load, then SIGCONT."""
    figures = Figures(f"sigstop-{balancer}")
    window = 10.0 if lab.long else 6.0
    async with running_shop(lab, balancer=balancer, rate=200, puts=25) as shop:
        await shop.warm()
        lab.mark_rss()
        frozen = shop.instances[0]
        fault_start = time.monotonic()
        frozen.signal(signal.SIGSTOP)
        await anyio.sleep(window)  # the fault itself lasts this long
        frozen.signal(signal.SIGCONT)
        fault_end = time.monotonic()
        gets, puts = _split(shop.loads)
        # It serves again once the callers' ejection (30 s at first, see chaos/shop.py)
        # is over: noted, not awaited for ever.
        try:
            await gets[0].served_by({str(frozen.pid)}, since=fault_end, within=45)
            figures.notes["frozen one serves again after s"] = time.monotonic() - fault_end
        except TimeoutError:
            figures.notes["frozen one serves again after s"] = "not within 45"
        figures.converge = await shop.change_routes(balancer=balancer)
        figures.rss = lab.rss_figures()
    figures.add(gets, fault=(fault_start, fault_end), since=lab.steady)
    # A call that waited out two tries was sent to the frozen instance twice.
    figures.notes["calls past 2 tries"] = sum(
        s.latency >= 2 * PER_TRY for load in gets for s in load.window(fault_start, fault_end)
    )
    _puts(figures, puts)
    return figures


async def rolling_restart(lab: Lab) -> Figures:
    """SIGTERM of every instance in turn, each replaced before the next goes."""
    figures = Figures("rolling-restart")
    async with running_shop(lab, puts=25) as shop:
        await shop.warm()
        lab.mark_rss()
        fault_start = time.monotonic()
        codes = []
        for i in range(len(shop.instances)):
            codes.append(await shop.instances[i].stop(grace=30))
            since = time.monotonic()
            fresh = await shop.start_instance(i)
            await shop.loads[0].served_by({str(fresh.pid)}, since=since, within=60)
        fault_end = time.monotonic()
        figures.notes["exit codes"] = codes
        figures.converge = await shop.change_routes()
        figures.rss = lab.rss_figures()
    gets, puts = _split(shop.loads)
    figures.add(gets, fault=(fault_start, fault_end), since=lab.steady)
    _puts(figures, puts)
    return figures


async def lame_duck(lab: Lab) -> Figures:
    """``nats-server --signal ldm=<pid>`` on the server the clients use: they move off."""
    figures = Figures("lame-duck")
    async with running_shop(lab, puts=25, clients=("load-a",)) as shop:
        await shop.warm()
        lab.mark_rss()
        mesh = shop.meshes["load-a"]
        url = mesh.nats.connected_url
        assert url is not None
        node = next(n for n in shop.nodes if n.ports["client"] == url.port)
        fault_start = time.monotonic()
        done = await anyio.run_process(
            [str(NATS_SERVER), "--signal", f"ldm={node.pid}"], check=False
        )
        figures.notes["ldm signal exit"] = done.returncode
        code = await node.proc.wait(120)  # type: ignore[union-attr]
        figures.notes["server left after s"] = time.monotonic() - fault_start
        figures.notes["server exit"] = code

        # The server closed its last client just before it exited: that one may still be
        # reconnecting now. Moved means connected to another server, awaited (bounded).
        def moved() -> bool:
            now = mesh.nats.connected_url
            return now is not None and now.port != node.ports["client"]

        with contextlib.suppress(TimeoutError):  # not moved: the figure says so
            await eventually(moved, within=10, what="the client on another server")
        figures.notes["client moved"] = moved()
        figures.notes["restart s"] = await lab.restart(node)
        fault_end = time.monotonic()
        figures.converge = await shop.change_routes()
        figures.rss = lab.rss_figures()
    gets, puts = _split(shop.loads)
    figures.add(gets, fault=(fault_start, fault_end), since=lab.steady)
    _puts(figures, puts)
    return figures


async def partition(lab: Lab) -> Figures:
    """One server cut off from the other two (network namespaces, packets dropped)."""
    figures = Figures("partition")
    network = Network(3)
    network.create()
    lab.network = network
    nodes = await lab.cluster("eu-west", 3, netns=network)
    minority, majority = nodes[2], nodes[:2]
    # Placed, not drawn at random: one instance, one controller and one client on the
    # server that will be cut off; the CLI talks to the majority.
    minor_nc = await nats.connect(
        servers=[minority.url, *(n.url for n in majority)],
        dont_randomize=True,
        name="load-minor",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        ping_interval=10,
        max_outstanding_pings=3,
    )
    try:
        figures = await _partition_load(lab, figures, network, nodes, minor_nc)
    finally:
        await minor_nc.close()
    return figures


async def _partition_load(
    lab: Lab, figures: Figures, network: Network, nodes: list[NatsNode], minor_nc: NATS
) -> Figures:
    minority, majority = nodes[2], nodes[:2]
    major_urls = urls(majority)
    shop = await start_shop(lab, nodes, instances=0, controllers=0)
    shop.controllers.append(await lab.controller("controller-minor", minority.url))
    shop.controllers.append(await lab.controller("controller-major", major_urls))
    await lab.apply_until_ok(shop.routes, major_urls)
    for i, node in enumerate(nodes):
        shop.instances.append(await lab.serve(f"catalog-{i}", CATALOG, node.url))
    async with loaded(shop, {"load-major": major_urls, "load-minor": minor_nc}):
        await shop.warm()
        lab.mark_rss()
        fault_start = time.monotonic()
        network.cut(2, [0, 1])
        # The majority keeps the KV writable: a change applied there reaches its clients.
        shop.changes += 1
        done, refused = await lab.apply_until_ok(catalog_routes(change=shop.changes), major_urls)
        figures.notes["kv writable on majority after s"] = time.monotonic() - fault_start
        figures.notes["applies refused"] = len(refused)
        figures.notes["majority converged s"] = await lab.converge(
            "catalog", ["load-major"], major_urls, since=time.monotonic() - done.seconds
        )
        window = 10.0 if lab.long else 6.0
        await anyio.sleep(max(0.0, fault_start + window - time.monotonic()))  # the cut's length
        healed = time.monotonic()
        network.heal()
        # After the heal, the minority's client catches up with the change it missed.
        figures.converge = await lab.converge("catalog", shop.meshes, major_urls, since=healed)
        fault_end = time.monotonic()
        await settle(shop.loads)
        figures.rss = lab.rss_figures()
    figures.add(shop.loads, fault=(fault_start, fault_end), since=lab.steady)
    return figures


async def _freeze_p2c(lab: Lab) -> Figures:
    return await freeze(lab, "p2c")


async def _freeze_queue(lab: Lab) -> Figures:
    return await freeze(lab, "queue")


SCENARIOS = {
    "kv-leader-kill": kv_leader,
    "controller-kill": controller_failover,
    "sigstop-p2c": _freeze_p2c,
    "sigstop-queue": _freeze_queue,
    "rolling-restart": rolling_restart,
    "lame-duck": lame_duck,
    "partition": partition,
}
