"""Behaviour that depends on real processes: SIGTERM drains, rolling restarts lose nothing."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import nats
import pytest
from procs import Proc
from waits import eventually

from natsmesh import Mesh, Retries, ServicePolicy

pytestmark = pytest.mark.anyio


async def test_sigterm_finishes_in_flight_requests_then_exits(nats_url: str) -> None:
    with Proc("serve", "services:Echo", nats_url=nats_url) as proc:
        await anyio.to_thread.run_sync(proc.wait_ready)
        async with Mesh(nats_url) as mesh:
            results: list[Any] = []

            async def slow() -> None:
                results.append(await mesh.call("echo.slow", {"seconds": 0.5}, timeout=5))

            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(slow)
                await eventually(lambda: _in_flight(nats_url, "echo", 4))  # all in the handler
                proc.signal(signal.SIGTERM)
            assert len(results) == 4
            code = await anyio.to_thread.run_sync(proc.popen.wait, 10)
            assert code == 0, "".join(proc.stderr_lines)


async def test_serve_instances_run_as_one_queue_group(nats_url: str) -> None:
    with Proc("serve", "services:Echo", "--instances", "3", nats_url=nats_url) as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready)
        assert line.count("echo/") == 3
        async with Mesh(nats_url) as mesh:
            assert len(await mesh.services("echo")) == 3
        assert await anyio.to_thread.run_sync(proc.terminate) == 0


@pytest.mark.slow
@pytest.mark.parametrize("attempts", [1, 3], ids=["retries-off", "default-retries"])
async def test_rolling_restart_loses_no_call(nats_url: str, attempts: int) -> None:
    procs = [Proc("serve", "services:Echo", nats_url=nats_url) for _ in range(3)]
    try:
        for p in procs:
            await anyio.to_thread.run_sync(p.wait_ready)
        ok = failed = 0
        errors: list[str] = []
        served: set[int] = set()
        stop = anyio.Event()
        # With retries off only the drain protects the calls: in-flight requests finish
        # and the queue group stops sending to an instance before it goes.
        policy = ServicePolicy(retries=Retries(attempts=attempts))
        async with Mesh(nats_url, policy=policy, tables=False) as mesh:

            async def load() -> None:
                nonlocal ok, failed
                deadline = time.monotonic() + 60  # bounded even if the restarts stall
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        out = await mesh.call("echo.slow", {"seconds": 0.02}, timeout=5)
                        served.add(out["pid"])
                        ok += 1
                    except Exception as exc:
                        failed += 1
                        errors.append(repr(exc))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(load)
                for i in range(3):
                    code = await anyio.to_thread.run_sync(procs[i].terminate)
                    assert code == 0
                    procs[i].close()
                    procs[i] = Proc("serve", "services:Echo", nats_url=nats_url)
                    await anyio.to_thread.run_sync(procs[i].wait_ready)
                    await eventually(lambda i=i: procs[i].pid in served)  # it takes its share
                stop.set()
        assert failed == 0, errors[:5]
        assert ok > 100
    finally:
        for p in procs:
            p.close()


class Load:
    """Steady calls from several workers, each call's start, latency and outcome."""

    def __init__(self, mesh: Mesh, workers: int = 8) -> None:
        self.mesh = mesh
        self.workers = workers
        self.samples: list[tuple[float, float, str]] = []  # (start, seconds, pid or error)
        self.stop = anyio.Event()
        self._waits: list[tuple[Callable[[], bool], anyio.Event]] = []

    async def until(self, check: Callable[[], bool], *, within: float = 30.0) -> None:
        """Wait until ``check()`` holds, tested as each call's sample comes in."""
        event = anyio.Event()
        self._waits.append((check, event))
        with anyio.fail_after(within):
            await event.wait()

    def _record(self, sample: tuple[float, float, str]) -> None:
        self.samples.append(sample)
        for check, event in self._waits:
            if not event.is_set() and check():
                event.set()

    async def run(self, *, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit  # bounded even if the test stalls

        async def worker() -> None:
            while not self.stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    out = await self.mesh.call("echo.slow", {"seconds": 0.005}, timeout=5)
                    result = str(out["pid"])
                except Exception as exc:
                    result = f"error: {exc!r}"
                self._record((started, time.monotonic() - started, result))

        async with anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(worker)

    def errors(self) -> list[str]:
        return [r for _, _, r in self.samples if r.startswith("error")]

    def p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        lat = sorted(s for t, s, _ in self.samples if since <= t < until)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))]


async def _in_flight(nats_url: str, service: str, count: int) -> bool:
    """Whether the service's instance reports ``count`` requests in its handlers ($SRV.STATS)."""
    nc = await nats.connect(nats_url)
    try:
        reply = await nc.request(f"$SRV.STATS.{service}", b"", timeout=2)
    finally:
        await nc.close()
    return any(e["data"]["in_flight"] == count for e in json.loads(reply.data)["endpoints"])


def _registered(mesh: Mesh) -> int:
    assert mesh._tables is not None
    snap = mesh._tables.snapshot("echo")
    return 0 if snap.registry is None else len(snap.registry.instances)


async def _fleet(nats_url: str, mesh: Mesh, n: int) -> list[Proc]:
    procs = [Proc("serve", "services:Echo", nats_url=nats_url) for _ in range(n)]
    for p in procs:
        await anyio.to_thread.run_sync(p.wait_ready)
    await mesh.call("echo.echo", {"id": 1, "name": "x"})
    assert mesh._tables is not None

    await eventually(lambda: _registered(mesh) == n)
    return procs


@pytest.mark.slow
async def test_kill_9_of_one_of_three_loses_no_call(nats_url: str) -> None:
    # The default policy, no per-try timeout: the requests the dead instance took with it
    # fail at once when the first no responders proves it gone, and are retried (the
    # endpoint is idempotent); later calls never choose it again.
    from natsmesh.control._controller import Controller

    async with Controller(nats_url) as _, Mesh(nats_url) as mesh:
        procs = await _fleet(nats_url, mesh, 3)
        try:
            baseline = Load(mesh)
            async with anyio.create_task_group() as tg:
                tg.start_soon(baseline.run)
                await baseline.until(lambda: len(baseline.samples) >= 1000)
                baseline.stop.set()
            load = Load(mesh)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await load.until(lambda: len(load.samples) >= 300)
                failovers = mesh.metrics()["echo"]["failovers"]
                killed_at = time.monotonic()
                procs[0].signal(signal.SIGKILL)
                # Until the mesh itself knows (the controller expires it from the registry):
                # every call before relied on this client's own proof.
                await load.until(lambda: _registered(mesh) == 2)
                await load.until(lambda: len(load.samples) >= 600)
                load.stop.set()
            assert load.errors() == []
            assert len(load.samples) > 200
            # One failover per call in flight towards it when it died, at most (8 workers),
            # not one per call until the registry notices (dozens to hundreds).
            assert mesh.metrics()["echo"]["failovers"] - failovers <= 8
            # Nothing waited for a reply that could not come (generous: a busy machine).
            assert load.p99(since=killed_at) <= 0.5 + baseline.p99()
        finally:
            for p in procs:
                p.close()


@pytest.mark.slow
async def test_a_frozen_instance_is_avoided_and_serves_again_after_sigcont(
    nats_url: str,
) -> None:
    from natsmesh.control._controller import Controller

    async with Controller(nats_url) as controller, Mesh(nats_url) as mesh:
        procs = await _fleet(nats_url, mesh, 3)
        frozen = procs[0]
        # A frozen instance is slow, not gone: that is hedging's job (the default policy
        # has no per-try timeout, so that a slow but healthy instance is not a failure).
        routes = b"[services.echo.hedging]\npercentile = 90\nmax_ratio = 0.2\n"
        assert (await controller.apply(routes)).ok
        await eventually(lambda: mesh._tables is not None and mesh._tables.snapshot("echo").policy)
        try:
            load = Load(mesh)
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.run)
                await load.until(lambda: len(load.samples) >= 300)
                stopped_at = time.monotonic()
                frozen.signal(signal.SIGSTOP)
                await anyio.sleep(10.0)  # the scenario: frozen for 10 s, under load
                frozen.signal(signal.SIGCONT)
                resumed_at = time.monotonic()
                pid = str(frozen.pid)
                # Until it serves again, as the assertion below wants it to.
                await load.until(
                    lambda: load.samples[-1][0] > resumed_at + 2 and load.samples[-1][2] == pid
                )
                load.stop.set()
            assert load.errors() == []
            # Within 3 s the frozen instance gets no more requests: nothing waits out a try.
            late = [s for t, s, _ in load.samples if stopped_at + 3 <= t < resumed_at]
            assert late
            assert max(late) < 0.5
            # After SIGCONT it reconnects and takes its share again.
            served_after = {r for t, _, r in load.samples if t > resumed_at + 2}
            assert str(frozen.pid) in served_after
        finally:
            frozen.signal(signal.SIGCONT)
            for p in procs:
                p.close()
