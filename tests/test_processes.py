"""Behaviour that depends on real processes: SIGTERM drains, rolling restarts lose nothing."""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest
from procs import Proc

from natsmesh import Mesh

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
                await anyio.sleep(0.2)  # the requests are in the handler, sleeping 0.5 s
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
async def test_rolling_restart_loses_no_call(nats_url: str) -> None:
    procs = [Proc("serve", "services:Echo", nats_url=nats_url) for _ in range(3)]
    try:
        for p in procs:
            await anyio.to_thread.run_sync(p.wait_ready)
        ok = failed = 0
        errors: list[str] = []
        stop = anyio.Event()
        async with Mesh(nats_url) as mesh:

            async def load() -> None:
                nonlocal ok, failed
                deadline = time.monotonic() + 60  # bounded even if the restarts stall
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        await mesh.call("echo.slow", {"seconds": 0.02}, timeout=5)
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
                    await anyio.sleep(0.2)
                stop.set()
        assert failed == 0, errors[:5]
        assert ok > 100
    finally:
        for p in procs:
            p.close()
