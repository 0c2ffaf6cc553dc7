"""Load faults on a 3-server cluster: overload, a slow consumer, and a soak."""

from __future__ import annotations

import signal
import time

import anyio
import httpx
import nats
from waits import eventually

from chaos.figures import Figures
from chaos.lab import Lab
from chaos.load import Load, http_call, mesh_call, p99, settle
from chaos.services import BUSY_CONCURRENCY
from chaos.shop import catalog_routes, start_shop
from natsmesh import Mesh

#: Seconds the busy service works on each request: capacity is 4 / 0.2 = 20/s.
BUSY_WORK = 0.2
#: Seconds of (I/O) work per soak call.
SOAK_WORK = 0.0


async def _steady(seconds: float) -> tuple[float, float]:
    """A phase of the load ``seconds`` long: its (start, end)."""
    start = time.monotonic()
    await anyio.sleep(seconds)  # the phase is a length of time under load, by definition
    return start, time.monotonic()


async def overload(lab: Lab) -> Figures:
    """Offered load stepped to 3x capacity through the gateway, then back to half."""
    figures = Figures("overload")
    nodes = await lab.cluster("eu-west", 3)
    shop = await start_shop(lab, nodes, instances=0, controllers=1)
    await lab.serve("busy-0", "chaos.services:Busy", shop.servers)
    _, url = await lab.gateway("gateway", shop.servers)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        call = http_call(client, "/busy/work", {"work": BUSY_WORK})
        # Capacity: what the service can do, max_concurrency requests per work time (the
        # closed loop below, as many callers as it takes at once, gets a little less: each
        # caller's round trip leaves the service idle for a moment).
        capacity = BUSY_CONCURRENCY / BUSY_WORK
        closed = Load("capacity", call, rate=None, concurrency=BUSY_CONCURRENCY)
        async with anyio.create_task_group() as tg:
            tg.start_soon(closed.run)
            await closed.calls(100, within=60)  # warm
            lab.mark_rss()
            first, begin = len(closed.samples), time.monotonic()
            await closed.calls(600 if lab.long else 200, within=120)
            figures.notes["closed-loop per s"] = (len(closed.samples) - first) / (
                time.monotonic() - begin
            )
            closed.stop()
        baseline = p99(closed.samples[first:])
        step = 20.0 if lab.long else 6.0
        load = Load("offered", call, rate=3 * capacity)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            over = await _steady(step)
            load.rate = capacity / 2
            under = await _steady(step)
            load.stop()
        figures.rss = lab.rss_figures()
    _overload_figures(figures, load, capacity, baseline, over, under)
    return figures


def _overload_figures(
    figures: Figures,
    load: Load,
    capacity: float,
    baseline: float,
    over: tuple[float, float],
    under: tuple[float, float],
) -> None:
    during = load.window(*over)
    ok = [s for s in during if s.ok]
    shed = [s for s in during if s.shed]
    # Goodput by completion: replies that came back within the step, per second, from
    # its second second on (the first replies come back a work time after it starts).
    begin = over[0] + 1.0
    done = [s for s in load.samples if s.ok and begin <= s.start + s.latency < over[1]]
    goodput = len(done) / (over[1] - begin)
    settled = load.window(under[0] + 0.5, under[1])  # "at once": from half a second on
    figures.add([load], fault=over, since=0.0)  # this load starts after the warm-up
    figures.p99_fault = p99(ok)
    figures.notes.update(
        {
            "capacity per s": capacity,
            "offered per s": 3 * capacity,
            "goodput per s": goodput,
            "goodput share": goodput / capacity,
            "shed 503": len(shed),
            "shed p99 s": p99(shed),
            "admitted p99 s": p99(ok),
            "baseline p99 s": baseline,
            "after: failed": len([s for s in settled if not s.ok]),
            "after: p99 s": p99(settled),
        }
    )


async def slow_consumer(lab: Lab) -> Figures:
    """A handler blocks its instance's event loop while traffic for it piles up in the server."""
    figures = Figures("slow-consumer")
    stall = 6.0
    nodes = await lab.cluster("eu-west", 3)
    shop = await start_shop(lab, nodes, instances=0, controllers=1)
    await lab.apply_until_ok(catalog_routes(service="sink"), shop.servers)
    sinks = []
    for i, node in enumerate(nodes):  # one per server: the stalled one's server is known
        proc = await lab.serve(
            f"sink-{i}", "chaos.services:Sink", node.url, env={"CHAOS_STALL_SECONDS": str(stall)}
        )
        sinks.append(proc)
    stalled, server = sinks[0], nodes[0]
    assert stalled.ready_match is not None
    instance_id = stalled.ready_match.string.split("sink/", 1)[1].strip()
    async with Mesh(shop.servers, name="load-a") as mesh:
        load = Load("load-a", mesh_call(mesh, "sink.get", {"id": 1}), rate=100)
        async with anyio.create_task_group() as tg:
            tg.start_soon(load.run)
            await load.served_by({str(p.pid) for p in sinks}, since=time.monotonic())
            await settle([load])
            lab.mark_rss()
            logged = server.proc.watch(r"[Ss]low [Cc]onsumer")  # type: ignore[union-attr]
            client_lines = stalled.watch(r"nats .*:")
            before = (await server.varz())["slow_consumers"]
            fault_start = time.monotonic()
            # Its next request (a call, or the flood's first message) blocks the process,
            # and the rest of the flood piles up in the server.
            stalled.signal(signal.SIGUSR1)
            await _flood(server.url, f"mesh._i.sink.{instance_id}.put")
            after = await _until_slow(server, before)
            figures.notes["server slow_consumers"] = f"{before}>{after}"
            figures.notes["server log"] = logged[:1]
            figures.notes["detected after s"] = time.monotonic() - fault_start
            recovered = await _answers(shop.servers, f"$SRV.PING.sink.{instance_id}")
            figures.notes["instance back after s"] = recovered - fault_start
            fault_end = time.monotonic()
            figures.notes["instance log"] = client_lines[:2]
            await settle([load])
            figures.rss = lab.rss_figures()
            load.stop()
    figures.add([load], fault=(fault_start, fault_end), since=lab.steady)
    return figures


async def _flood(url: str, subject: str) -> None:
    """96 MiB for the stalled instance: more than the server's 64 MiB pending limit."""
    nc = await nats.connect(url)
    try:
        chunk = b"x" * (512 * 1024)
        for _ in range(192):
            await nc.publish(subject, chunk)
        await nc.flush(timeout=10)
    finally:
        await nc.close()


async def _until_slow(node: object, before: int, *, within: float = 20.0) -> int:
    """The server's slow-consumer count once it passes ``before``; as it is after ``within``."""

    async def count() -> int:
        return int((await node.varz())["slow_consumers"])  # type: ignore[attr-defined]

    async def more() -> int:
        return now if (now := await count()) > before else 0

    try:
        return await eventually(more, within=within, every=0.1, what="a new slow consumer")
    except TimeoutError:  # not a failure here: the figure "before>after" says it
        return await count()


async def _answers(servers: str, subject: str, *, within: float = 60.0) -> float:
    """When ``subject`` is answered again (the instance reconnected)."""
    nc = await nats.connect(servers=servers.split(","))

    async def answered() -> bool:
        await nc.request(subject, b"", timeout=0.5)
        return True

    try:
        # No responders, or a timeout while the instance is stalled: not yet.
        what = f"an answer on {subject}"
        await eventually(answered, within=within, every=0.1, what=what, retry_on=(Exception,))
        return time.monotonic()
    finally:
        await nc.close()


async def soak(lab: Lab) -> Figures:
    """64 concurrent calls for 60 s (10 minutes with --chaos-long), and HTTP through the gateway.

    Memory is the mean of 5 samples after the warm-up and at the end: every process
    within 10 %.
    """
    figures = Figures("soak")
    # Long enough for the nats-servers (Go) to reach their steady heap: their RSS grows
    # for a while after the load starts, by GC pacing, not by a leak.
    seconds, warm_up = (600.0, 30.0) if lab.long else (60.0, 30.0)
    nodes = await lab.cluster("eu-west", 3)
    shop = await start_shop(lab, nodes)
    _, url = await lab.gateway("gateway", shop.servers)
    async with (
        Mesh(shop.servers, name="soak") as mesh,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        payload = {"id": 1, "work": SOAK_WORK}
        calls = Load("mesh-64", mesh_call(mesh, "catalog.get", payload), rate=None, concurrency=64)
        http = Load("http", http_call(client, "/catalog/get", {"id": 1}), rate=50)
        async with anyio.create_task_group() as tg:
            tg.start_soon(calls.run)
            tg.start_soon(http.run)
            await anyio.sleep(warm_up)  # the warm-up is a length of time, by definition
            lab.mark_rss()
            start = time.monotonic()
            before = await lab.rss_mean()
            # The soak is a length of time under load; the last 5 s are rss_mean's.
            await anyio.sleep(max(0.0, start + seconds - 5.0 - time.monotonic()))
            after = await lab.rss_mean()
            end = time.monotonic()
            figures.rss = {r: (b, after[r]) for r, b in before.items() if r in after}
            calls.stop()
            http.stop()
    figures.add([calls, http], fault=(start, end), since=lab.steady)
    figures.notes["mesh calls per s"] = len(calls.window(start, end)) / (end - start)
    return figures


SCENARIOS = {
    "overload": overload,
    "slow-consumer": slow_consumer,
    "soak": soak,
}
