"""A client's own proof that an instance is gone, and what lifts it (pure bookkeeping)."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from nats.errors import NoRespondersError
from services import Echo
from waits import eventually, leading

from natsmesh import Mesh, NoResponders, ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.traffic._traffic import DEFAULT_POLICY, GONE_RECHECK, ServiceTraffic
from natsmesh.traffic._zones import pick
from natsmesh.wire._control import Announcement, RegistryTable


def _instance(ident: str, *, healthy: bool = True) -> Announcement:
    return Announcement(service="shop", id=ident, version="1.0.0", subset="v1", healthy=healthy)


def _registry(*instances: Announcement) -> RegistryTable:
    return RegistryTable(service="shop", instances=instances)


def test_a_gone_instance_stays_out_until_the_registry_says_something_new() -> None:
    traffic = ServiceTraffic(DEFAULT_POLICY)
    a, b = _instance("a"), _instance("b")
    traffic.follow_registry(_registry(a, b))
    assert traffic.mark_gone("a", now=100.0)
    assert not traffic.mark_gone("a", now=100.1)  # once
    assert traffic.gone_now(100.2) == {"a"}
    # The registry rewritten for another reason, "a" unchanged: still out.
    traffic.follow_registry(_registry(a, b, _instance("c")))
    assert traffic.gone_now(101.0) == {"a"}
    # Announced anew (here: its health changed): back in choice.
    traffic.follow_registry(_registry(_instance("a", healthy=False), b))
    assert traffic.gone_now(101.0) == frozenset()


def test_a_gone_mark_ends_when_the_registry_drops_the_instance_or_after_the_recheck() -> None:
    traffic = ServiceTraffic(DEFAULT_POLICY)
    a, b = _instance("a"), _instance("b")
    traffic.follow_registry(_registry(a, b))
    traffic.mark_gone("a", now=0.0)
    traffic.follow_registry(_registry(b))
    assert traffic.gone_now(1.0) == frozenset()

    traffic.follow_registry(_registry(a, b))
    traffic.mark_gone("b", now=10.0)
    assert traffic.gone_now(10.0 + GONE_RECHECK - 0.01) == {"b"}
    assert traffic.gone_now(10.0 + GONE_RECHECK) == frozenset()


def test_pick_never_chooses_a_gone_instance() -> None:
    import random

    tiers = (("a", "b", "c"),)
    rng = random.Random(7)
    for _ in range(200):
        chosen = pick(
            tiers,
            exclude=set(),
            ejected=lambda i: i == "b",  # ejected may still be chosen when all else fails
            load=lambda i: 0.0,
            rng=rng,
            gone={"a", "c"},
        )
        assert chosen.instance == "b"
    assert (
        pick(
            tiers,
            exclude={"b"},
            ejected=lambda i: False,
            load=lambda i: 0.0,
            rng=rng,
            gone={"a", "c"},
        ).instance
        is None
    )


@pytest.mark.anyio
async def test_a_draining_instance_still_answers_what_it_took(nats_url: str) -> None:
    # A draining instance stops listening on its subjects before it finishes what it
    # took: the no responders a caller meets then is no proof of death, and the calls
    # it is still working on must get their replies, not InstanceLost.
    # The controller runs in a task of its own (it owns a task group): it stops while
    # the runner and the client it saw stay up.
    stop, stopped = anyio.Event(), anyio.Event()

    async def control(*, task_status: TaskStatus[Controller]) -> None:
        async with Controller(nats_url, lease=1.0) as controller:
            task_status.started(controller)
            await stop.wait()
        stopped.set()

    async with anyio.create_task_group() as outer:
        controller = await outer.start(control)
        await leading(controller)
        runner = await ServiceRunner(Echo(), nats=nats_url).__aenter__()
        mesh = await Mesh(nats_url).__aenter__()
        try:
            assert mesh._tables is not None
            await mesh._tables.ensure("echo", wait=5)
            await eventually(lambda: mesh._tables.snapshot("echo").registry)  # type: ignore[union-attr]
            stop.set()
            await stopped.wait()
        except BaseException:
            await mesh.__aexit__(None, None, None)
            await runner.__aexit__(None, None, None)
            raise
        # The controller is gone: the client's registry keeps listing the instance.
        try:
            subject = f"mesh._i.echo.{runner.id}.slow"
            async with anyio.create_task_group() as tg:
                slow: list[Any] = []

                async def call_slow() -> None:
                    slow.append(await mesh.call("echo.slow", {"seconds": 1.0}))

                tg.start_soon(call_slow)
                await eventually(lambda: runner.stats().endpoints[1].num_requests == 1)
                tg.start_soon(runner.drain)

                async def unsubscribed() -> bool:
                    try:
                        await mesh.nats.request(subject, b"", timeout=1)
                    except NoRespondersError:
                        return True
                    except Exception:
                        return False
                    return False

                await eventually(unsubscribed)
                with pytest.raises(NoResponders):
                    await mesh.call("echo.slow", {"seconds": 0})
            assert slow
            assert slow[0]["pid"] == os.getpid()
            assert runner.id in mesh._caller.traffic["echo"].gone  # type: ignore[union-attr]
        finally:
            await mesh.__aexit__(None, None, None)
            await runner.__aexit__(None, None, None)
