"""The default policy and the budget: what a callee is told, and that no call outlives it.

Real nats-server, controller and services (in this process where nothing depends on
processes; a real frozen process where something does).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from procs import Proc
from services import Echo, Frontdesk
from waits import eventually, leading

from natsmesh import DeadlineExceeded, Mesh, NoResponders, ServiceRunner
from natsmesh.client._client import link_of
from natsmesh.client._discovery import gather
from natsmesh.control._controller import Controller
from natsmesh.wire._micro import Stats

pytestmark = pytest.mark.anyio


@pytest.fixture
async def controller(nats_url: str) -> AsyncIterator[Controller]:
    async with Controller(nats_url, lease=1.0) as ctl:
        await leading(ctl)
        yield ctl


async def _apply(controller: Controller, toml: str) -> None:
    reply = await controller.apply(toml.encode(), allow_empty=True)
    assert reply.ok, reply


async def _known(mesh: Mesh, service: str, *, routes: bool) -> None:
    """The client has ``service``'s registry (idempotent flags) and, if asked, its routes."""
    assert mesh._tables is not None
    await mesh._tables.ensure(service, wait=5)

    def synced() -> bool:
        snap = mesh._tables.snapshot(service)  # type: ignore[union-attr]
        return (
            snap.registry is not None
            and bool(snap.registry.instances)
            and (snap.policy is not None or not routes)
        )

    await eventually(synced)


async def _endpoint_stats(mesh: Mesh, service: str, endpoint: str) -> tuple[int, int, str]:
    """(requests, errors, last error) of ``service.endpoint`` over all its instances."""
    requests = errors = 0
    last = ""
    for stats in await gather(link_of(mesh), "STATS", Stats, name=service, timeout=1.0):
        for e in stats.endpoints:
            if e.name == endpoint:
                requests += e.num_requests
                errors += e.num_errors
                last = e.last_error or last
    return requests, errors, last


async def test_a_slow_idempotent_handler_answers_and_runs_once(
    nats_url: str, controller: Controller
) -> None:
    # The case: 1.1 s of work inside a 3 s budget, default policy, a controller
    # running (so p2c, and the endpoint known to be idempotent).
    async with (
        ServiceRunner(Echo(), nats=nats_url),
        ServiceRunner(Frontdesk(), nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await _known(mesh, "frontdesk", routes=False)
        reply = await mesh.call("frontdesk.welcome", {"name": "twice", "sleep_ms": 1100}, timeout=3)
        assert reply["hello"] == "twice"
        assert await _endpoint_stats(mesh, "frontdesk", "welcome") == (1, 0, "")
        nested_runs, _, _ = await _endpoint_stats(mesh, "echo", "slow")
        assert nested_runs == 1


async def test_the_callee_is_told_what_the_try_waits_for(
    nats_url: str, controller: Controller
) -> None:
    await _apply(
        controller,
        """
        [services.frontdesk.retries]
        attempts = 2
        per_try_timeout = 0.5
        retry_on = ["timeout"]
        """,
    )
    async with (
        ServiceRunner(Echo(), nats=nats_url),
        ServiceRunner(Frontdesk(), nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await _known(mesh, "frontdesk", routes=True)
        reply = await mesh.call("frontdesk.welcome", {"name": "a"}, timeout=3)
        # Not the 3 s budget: the 0.5 s this try waits for, and the nested call inherits it.
        assert 0 < reply["remaining"] <= 0.5
        assert 0 < reply["nested_remaining"] <= reply["remaining"]


async def test_a_callee_drops_the_work_of_an_abandoned_try(
    nats_url: str, controller: Controller
) -> None:
    await _apply(
        controller,
        """
        [services.frontdesk.retries]
        attempts = 2
        per_try_timeout = 0.3
        retry_on = ["timeout"]
        """,
    )
    async with (
        ServiceRunner(Echo(), nats=nats_url),
        ServiceRunner(Frontdesk(), nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await _known(mesh, "frontdesk", routes=True)
        with pytest.raises(DeadlineExceeded):
            await mesh.call("frontdesk.welcome", {"name": "a", "sleep_ms": 1500}, timeout=3)
        # Both tries were given up by the caller after 0.3 s: the service gave up too,
        # instead of working 1.5 s for nobody.
        await eventually(lambda: _errors_are(mesh, 2), within=5)


async def _errors_are(mesh: Mesh, n: int) -> bool:
    return (await _endpoint_stats(mesh, "frontdesk", "welcome"))[1:] == (
        n,
        "504: deadline exceeded",
    )


async def test_no_call_outlives_its_budget_with_every_policy_feature(
    nats_url: str, controller: Controller
) -> None:
    # A real slow handler (5 s of work), the first call of a fresh client (its table
    # load included), retries of timeouts with per-try timeouts, backoff and hedges.
    await _apply(
        controller,
        """
        [services.echo]
        timeout = 1.2
        [services.echo.retries]
        attempts = 5
        per_try_timeout = 0.35
        retry_on = ["timeout", "unavailable", "overloaded", "no_responders"]
        backoff = 0.05
        max_backoff = 0.2
        [services.echo.hedging]
        delay = 0.1
        max_ratio = 1.0
        """,
    )
    async with ServiceRunner(Echo(), nats=nats_url), ServiceRunner(Echo(), nats=nats_url):
        async with Mesh(nats_url) as warm:
            await _known(warm, "echo", routes=True)
        for budget in (None, 0.6):
            async with Mesh(nats_url) as mesh:
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    await mesh.call("echo.slow", {"seconds": 5}, timeout=budget)
                elapsed = time.monotonic() - started
                # Generous for a busy machine, but under one more try or backoff.
                assert elapsed < (budget or 1.2) + 0.15, elapsed


@pytest.mark.slow
async def test_a_frozen_instance_does_not_stretch_a_call_past_its_budget(nats_url: str) -> None:
    # No responders for the endpoint, and an instance that holds its $SRV subscriptions
    # but answers nothing: looking the endpoint up must not outlast the budget.
    with Proc("serve", "services:Echo", nats_url=nats_url) as proc:
        await anyio.to_thread.run_sync(proc.wait_ready)
        proc.signal(signal.SIGSTOP)
        try:
            async with Mesh(nats_url, tables=False) as mesh:
                started = time.monotonic()
                with pytest.raises((NoResponders, DeadlineExceeded)):
                    await mesh.call("echo.nosuch", {}, timeout=0.2)
                # The $SRV lookup alone would wait 0.5 s.
                assert time.monotonic() - started < 0.45
        finally:
            proc.signal(signal.SIGCONT)
