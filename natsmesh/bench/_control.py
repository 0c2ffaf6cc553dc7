"""``natsmesh bench control``: how fast route changes reach callers, and what the controller costs.

Convergence: a controller (its own process), a service, and ``clients`` Mesh
clients each calling the service; a route change is applied ``applies`` times
and each time the clock runs from the controller's reply until every client's
status report says it applied the new revision. Scale: ``instances`` simulated
instances (spread over ``services``) announce and heartbeat
every 2 s while the controller's CPU and memory are read from /proc.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import anyio.streams.text

from natsmesh.bench._env import BenchError
from natsmesh.client._client import Mesh
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._spec import endpoint, service
from natsmesh.transport._transport import NATS, connect, request
from natsmesh.wire._control import (
    ALLOW_EMPTY,
    Announcement,
    ApplyReply,
    EndpointEntry,
    Heartbeat,
    StatusReport,
    control_subject,
    instance_subject,
    status_subject,
)

CTL = "mesh"


@service("converge", version="1.0.0")
class Target:
    @endpoint(idempotent=True)
    async def ping(self) -> str:
        return "pong"


def _routes(timeout: float) -> bytes:
    return f"[services.converge]\ntimeout = {timeout}\n".encode()


async def _controller(url: str, loop: str) -> anyio.abc.Process:
    proc = await anyio.open_process(
        [sys.executable, "-m", "natsmesh", "controller", "--nats", url, "--loop", loop],
        stdout=-1,
        stderr=-3,  # DEVNULL
    )
    assert proc.stdout is not None
    line = await anext(anyio.streams.text.TextReceiveStream(proc.stdout), "")
    if "running" not in line:
        proc.kill()
        await proc.wait()
        raise BenchError(f"the controller did not start: {line.strip()!r}")
    return proc


async def _apply(nc: NATS, data: bytes) -> ApplyReply:
    subject = control_subject(CTL, "routes.apply")
    with anyio.fail_after(15):
        while True:  # until the controller holds its lease
            try:
                # Its services never run: only the tables' convergence is measured.
                msg = await request(nc, subject, data, timeout=2, headers={ALLOW_EMPTY: "1"})
            except Exception:
                await anyio.sleep(0.1)
                continue
            return ApplyReply.model_validate_json(msg.data)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def convergence(
    url: str, *, clients: int = 50, applies: int = 20, loop: str = "auto"
) -> dict[str, Any]:
    proc = await _controller(url, loop)
    try:
        nc = await connect(url, name="bench-control")
        applied: dict[str, int] = {}
        changed = anyio.Event()

        async def on_status(msg: Any) -> None:
            nonlocal changed
            report = StatusReport.model_validate_json(msg.data)
            got = report.services.get("converge")
            if got is not None and got.routes > applied.get(report.client, 0):
                applied[report.client] = got.routes
                changed.set()

        await nc.subscribe(status_subject(CTL, "*"), cb=on_status)
        first = await _apply(nc, _routes(5.0))
        assert first.ok, first
        times: list[float] = []
        whole: list[float] = []  # from sending the apply, for the skeptical
        # The clients are entered before the task group and left after it: each owns a
        # task group of its own, so they nest the other way round.
        async with ServiceRunner(Target, nats=url), AsyncExitStack() as entered:
            meshes = [Mesh(url, name=f"client-{i}", timeout=2) for i in range(clients)]
            for mesh in meshes:
                await entered.enter_async_context(mesh)
                await mesh.call("converge.ping")  # loads and watches the tables
            stop = anyio.Event()

            async def calling(m: Mesh) -> None:
                while not stop.is_set():
                    await m.call("converge.ping")
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                for mesh in meshes:
                    tg.start_soon(calling, mesh)
                for i in range(applies):
                    sent = time.perf_counter()
                    reply = await _apply(nc, _routes(3.0 + (i % 2)))
                    revision = reply.revisions["routes.converge"]
                    started = time.perf_counter()
                    with anyio.fail_after(10):
                        while sum(r >= revision for r in applied.values()) < clients:
                            changed = anyio.Event()
                            await changed.wait()
                    times.append((time.perf_counter() - started) * 1000)
                    whole.append((time.perf_counter() - sent) * 1000)
                stop.set()
        await nc.close()
    finally:
        proc.terminate()
        await proc.wait()
    return _convergence_figures(times, whole, clients=clients, applies=applies)


def _convergence_figures(
    times: list[float], whole: list[float], *, clients: int, applies: int
) -> dict[str, Any]:
    """Milliseconds from the apply's reply (``times``) and from its request (``whole``)."""
    return {
        "clients": clients,
        "applies": applies,
        "p50_ms": _percentile(times, 0.5),
        "p99_ms": _percentile(times, 0.99),
        "max_ms": max(times),
        "from_request_p50_ms": _percentile(whole, 0.5),
        "from_request_p99_ms": _percentile(whole, 0.99),
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def scale(
    url: str,
    *,
    services: int = 1000,
    instances: int = 5000,
    seconds: float = 10.0,
    loop: str = "auto",
) -> dict[str, Any]:
    proc = await _controller(url, loop)
    try:
        nc = await connect(url, name="bench-instances")
        fleet = [(f"svc{i % services}", f"inst{i}") for i in range(instances)]
        for name, instance in fleet:
            announcement = Announcement(
                service=name,
                id=instance,
                version="1.0.0",
                subset="v1",
                endpoints=(EndpointEntry(name="get", subject=f"mesh.{name}.get"),),
            )
            await nc.publish(
                instance_subject(CTL, "announce", name), announcement.model_dump_json().encode()
            )
        beats = [
            (
                instance_subject(CTL, "heartbeat", s),
                Heartbeat(service=s, id=i).model_dump_json().encode(),
            )
            for s, i in fleet
        ]
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        peak = 0.0
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            tick = time.monotonic()
            for subject, beat in beats:  # every instance heartbeats every 2 s
                await nc.publish(subject, beat)
            await nc.flush()
            peak = max(peak, _rss_mib(proc.pid))
            await anyio.sleep(max(0.0, 2.0 - (time.monotonic() - tick)))
        cpu = (_cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        # Fell behind? Every instance must still be registered.
        registered = await _registered(nc, services)
        await nc.close()
    finally:
        proc.terminate()
        await proc.wait()
    return {
        "instances": instances,
        "services": services,
        "heartbeats_per_second": instances / 2,
        "controller_cpu_percent": round(cpu * 100, 1),
        "controller_rss_mib": round(peak, 1),
        "registered": registered,
    }


async def _registered(nc: NATS, services: int) -> int:
    from natsmesh.transport._kv import Tables
    from natsmesh.transport._link import Link
    from natsmesh.wire._control import RegistryTable

    tables = await Tables.open(Link(nc))
    count = 0
    for i in range(services):
        entry = await tables.get(f"registry.svc{i}")
        if entry is not None and entry.value is not None:
            count += len(RegistryTable.model_validate_json(entry.value).instances)
    return count


async def run(
    url: str,
    *,
    clients: int,
    applies: int,
    instances: int,
    seconds: float = 10.0,
    loop: str = "auto",
) -> dict[str, Any]:
    """Convergence, then scale; the controller's process runs on ``loop``."""
    return {
        "convergence": await convergence(url, clients=clients, applies=applies, loop=loop),
        "scale": await scale(
            url,
            instances=instances,
            services=max(1, instances // 5),
            seconds=seconds,
            loop=loop,
        ),
    }


def format_result(result: dict[str, Any]) -> str:
    c, s = result["convergence"], result["scale"]
    return "\n".join(
        [
            f"convergence: {c['clients']} clients, {c['applies']} applies: "
            f"p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, max {c['max_ms']:.1f} ms "
            f"after the reply (from the request: p50 {c['from_request_p50_ms']:.1f} ms, "
            f"p99 {c['from_request_p99_ms']:.1f} ms)",
            f"scale: {s['instances']} instances in {s['services']} services, "
            f"{s['heartbeats_per_second']:.0f} heartbeats/s: controller CPU "
            f"{s['controller_cpu_percent']}% of one core, RSS {s['controller_rss_mib']} MiB, "
            f"{s['registered']} registered",
        ]
    )
