"""A ServiceRunner's and a Mesh's start, drain and stop, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import nats
import nats.errors
import pytest
from services import Echo

from natsmesh import (
    Mesh,
    NoResponders,
    ServiceRunner,
    endpoint,
    service,
)

pytestmark = pytest.mark.anyio

ITEM = {"id": 1, "name": "one"}


#: Seconds each request stays in the handler: the in-flight work a drain must wait out.
HOLD = 0.3


@service("gate", version="1.0.0")
class Gate:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = anyio.Event()
        self.count = 0

    @endpoint
    async def hold(self) -> str:
        self.count += 1
        if self.count == self.expected:
            self.arrived.set()
        await anyio.sleep(HOLD)
        return "done"


async def test_drain_finishes_in_flight_requests_then_leaves(nats_url: str) -> None:
    gate = Gate(expected=5)
    async with Mesh(nats_url) as mesh:
        results: list[Any] = []

        async def hold() -> None:
            results.append(await mesh.call("gate.hold", timeout=5))

        async with anyio.create_task_group() as tg, ServiceRunner(gate, nats=nats_url):
            for _ in range(5):
                tg.start_soon(hold)
            with anyio.fail_after(5):
                await gate.arrived.wait()  # all five are in the handler when the drain starts
        assert results == ["done"] * 5
        started = time.monotonic()
        with pytest.raises(NoResponders):
            await mesh.call("gate.hold", timeout=5)
        assert time.monotonic() - started < 1.0


async def test_leaving_out_of_order_is_a_clear_error_that_undoes_nothing(nats_url: str) -> None:
    async with Mesh(nats_url, tables=False) as mesh:
        runner = ServiceRunner(Echo, nats=nats_url)
        await runner.__aenter__()
        inner = await Mesh(nats_url, tables=False, name="inner").__aenter__()
        # Entered after both, left inside: wrong.
        async with anyio.create_task_group():
            with pytest.raises(RuntimeError, match="Mesh 'inner' must be left in the task"):
                await inner.__aexit__(None, None, None)
            with pytest.raises(RuntimeError, match=r"ServiceRunner echo/\S+ must be left in the"):
                await runner.__aexit__(None, None, None)
            # Nothing was undone: both still work, and this task is not cancelled.
            assert await inner.call("echo.echo", ITEM) == ITEM
        await inner.__aexit__(None, None, None)  # in order now
        await runner.__aexit__(None, None, None)
        with pytest.raises(NoResponders):
            await mesh.call("echo.echo", ITEM)


async def test_leaving_from_another_task_is_a_clear_error(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url) as runner:
        errors: list[BaseException] = []

        async def leave_elsewhere() -> None:
            try:
                await runner.__aexit__(None, None, None)
            except RuntimeError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(leave_elsewhere)
        assert len(errors) == 1
        assert "must be left in the task that entered it" in str(errors[0])


@service("failing", version="1.0.0")
class FailsOnEnter:
    """Its own __aenter__ fails: the runner is half-way through its start by then."""

    async def __aenter__(self) -> FailsOnEnter:
        raise OSError("the database is not there")

    async def __aexit__(self, *exc: object) -> None:
        raise AssertionError("never entered, so never exited")

    @endpoint
    async def ping(self) -> str:
        return "pong"


async def test_a_start_that_fails_half_way_leaves_nothing_behind(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        subs = len(nc._subs)
        baseline = _tasks()
        with pytest.raises(OSError, match="not there"):
            async with ServiceRunner(FailsOnEnter, nats=nc):
                raise AssertionError("not reached")
        assert nc.is_connected  # the caller's connection stays open...
        assert len(nc._subs) == subs  # ...with none of the runner's subscriptions
        await _settled(baseline)
    finally:
        await nc.close()


def _tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def _settled(baseline: set[asyncio.Task[Any]]) -> None:
    """Wait (bounded) until the tasks left are those that ran before."""
    with anyio.fail_after(5):
        while _tasks() - baseline:
            await anyio.lowlevel.checkpoint()


async def _cancel_after(scope: anyio.CancelScope, steps: int) -> None:
    for _ in range(steps):
        await anyio.lowlevel.checkpoint()
    scope.cancel()


@pytest.mark.parametrize("kind", ["runner", "mesh", "mesh-with-tables"])
async def test_a_start_cancelled_at_any_point_leaves_nothing_behind(
    nats_url: str, kind: str
) -> None:
    """Cancelled after 0, 1, 2, ... turns of the loop, until the start completes first."""
    probe = await nats.connect(nats_url)
    try:
        for steps in range(0, 2000):
            baseline = _tasks()
            started = False
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_after, scope, steps)
                    if kind == "runner":
                        target: Any = ServiceRunner(Echo, nats=nats_url)
                    else:
                        target = Mesh(nats_url, tables=kind == "mesh-with-tables")
                    async with target:
                        started = True  # the start completed before the cancel
                        await anyio.sleep_forever()
            await _settled(baseline)  # connection closed, no task of it left
            if kind == "runner":
                with pytest.raises(nats.errors.NoRespondersError):
                    await probe.request("mesh.echo.echo", b"", timeout=5)
                with pytest.raises(nats.errors.NoRespondersError):
                    await probe.request("$SRV.PING.echo", b"", timeout=5)
            if started:
                break
        else:
            raise AssertionError("the start never completed")
        assert steps > 3  # the cancel did land inside the start, at many points
    finally:
        await probe.close()
