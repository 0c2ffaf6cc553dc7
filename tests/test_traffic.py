"""Traffic policy end to end: real nats-server, controller, services and a Mesh client."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from waits import eventually, leading

from natsmesh import (
    Context,
    Mesh,
    NoResponders,
    RemoteError,
    ServiceError,
    ServiceRunner,
    endpoint,
    service,
)
from natsmesh.control._controller import Controller

pytestmark = pytest.mark.anyio


class Tally:
    """Requests seen, per instance, across the service objects of one test."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()


def versioned(version: str) -> type:
    @service("shop", version=version)
    class Shop:
        def __init__(self, tally: Tally | None = None, delay: float = 0.0) -> None:
            self.tally = tally or Tally()
            self.delay = delay
            self.version = version

        @endpoint(idempotent=True)
        async def which(self, ctx: Context) -> dict[str, Any]:
            self.tally.counts[self.version] += 1
            if self.delay:  # a slow instance is the behaviour under test: time must pass
                await anyio.sleep(self.delay)
            return {"version": self.version, "obj": id(self)}

        @endpoint(idempotent=True)
        async def broken(self) -> None:
            self.tally.counts["broken"] += 1
            raise ServiceError(503, "unavailable, always")

        @endpoint
        async def charge(self) -> None:
            self.tally.counts["charge"] += 1
            raise ServiceError(503, "payment backend down")

    return Shop


V1, V2 = versioned("1.0.0"), versioned("2.0.0")


@pytest.fixture
async def controller(nats_url: str) -> AsyncIterator[Controller]:
    async with Controller(nats_url, lease=1.0) as ctl:
        await leading(ctl)
        yield ctl


async def apply(controller: Controller, toml: str) -> None:
    reply = await controller.apply(toml.encode(), allow_empty=True)
    assert reply.ok, reply


async def ready(mesh: Mesh, instances: int, *, routes: bool = True) -> None:
    """The client has the service's registry (and routes) as the controller wrote them."""
    await mesh.call("shop.which")
    assert mesh._tables is not None

    def synced() -> bool:
        snap = mesh._tables.snapshot("shop")  # type: ignore[union-attr]
        have = 0 if snap.registry is None else len(snap.registry.instances)
        return have == instances and (snap.policy is not None or not routes)

    await eventually(synced)


async def test_a_canary_split_and_a_header_match(nats_url: str, controller: Controller) -> None:
    await apply(
        controller,
        """
        [services.shop]
        subsets = [{name = "v1", weight = 90}, {name = "v2", weight = 10}]
        matches = [{headers = {x-canary = "always"}, subset = "v2"}]
        """,
    )
    tally = Tally()
    async with (
        ServiceRunner(V1(tally), nats=nats_url),
        ServiceRunner(V2(tally), nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await ready(mesh, 2)
        tally.counts.clear()
        for _ in range(2000):
            await mesh.call("shop.which")
        share = tally.counts["2.0.0"] / 2000
        assert 0.07 <= share <= 0.13, tally.counts
        for _ in range(20):
            got = await mesh.call("shop.which", headers={"X-Canary": "always"})
            assert got["version"] == "2.0.0"


async def test_failover_follows_the_chain_when_a_subset_has_no_responders(
    nats_url: str, controller: Controller
) -> None:
    await apply(
        controller,
        """
        [services.shop]
        subsets = [{name = "v2", weight = 100}, {name = "v1", weight = 0}]
        failover = {v2 = "v1"}
        """,
    )
    async with ServiceRunner(V1(), nats=nats_url), Mesh(nats_url) as mesh:
        await ready(mesh, 1)
        for _ in range(10):
            assert (await mesh.call("shop.which"))["version"] == "1.0.0"
        assert mesh.metrics()["shop"]["failovers"] >= 10


async def test_hash_balancing_is_sticky_and_moves_only_the_keys_of_a_leaver(
    nats_url: str, controller: Controller
) -> None:
    await apply(
        controller,
        '[services.shop]\nload_balancer = "hash"\nhash_header = "x-user"\n',
    )
    runners = [ServiceRunner(V1(), nats=nats_url) for _ in range(3)]
    async with Mesh(nats_url) as mesh:
        for r in runners:
            await r.__aenter__()
        try:
            await ready(mesh, 3)
            users = [f"user{i}" for i in range(60)]

            async def placement() -> dict[str, int]:
                return {
                    u: (await mesh.call("shop.which", headers={"x-user": u}))["obj"] for u in users
                }

            first = await placement()
            assert first == await placement()  # sticky
            assert len(set(first.values())) == 3
            leaving = runners.pop()
            gone = id(leaving._target)
            await leaving.__aexit__(None, None, None)
            await ready(mesh, 2)
            after = await placement()
            moved = {u for u in users if after[u] != first[u]}
            assert moved == {u for u in users if first[u] == gone}
        finally:
            for r in reversed(runners):  # in the reverse order of entry, as async with would
                await r.__aexit__(None, None, None)


async def test_p2c_prefers_the_faster_instance(nats_url: str, controller: Controller) -> None:
    await apply(controller, '[services.shop]\nload_balancer = "p2c"\n')
    tally = Tally()
    fast, slow = V1(tally), V1(Tally(), delay=0.05)
    async with (
        ServiceRunner(fast, nats=nats_url),
        ServiceRunner(slow, nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await ready(mesh, 2)
        results = [await mesh.call("shop.which") for _ in range(60)]
        on_fast = sum(r["obj"] == id(fast) for r in results)
        assert on_fast >= 45, on_fast  # peak EWMA learns which one is slow


async def test_mirroring_copies_without_slowing_or_blocking_no_responders(
    nats_url: str, controller: Controller
) -> None:
    await apply(
        controller,
        """
        [services.shop]
        subsets = [{name = "v1", weight = 100}, {name = "v2", weight = 0}]
        mirror = {subset = "v2", percent = 100}
        """,
    )
    primary, shadow = Tally(), Tally()
    async with ServiceRunner(V2(shadow, delay=0.5), nats=nats_url), Mesh(nats_url) as mesh:
        async with ServiceRunner(V1(primary), nats=nats_url):
            await ready(mesh, 2)
            primary.counts.clear()
            started = time.monotonic()
            for _ in range(10):
                assert (await mesh.call("shop.which"))["version"] == "1.0.0"
            assert time.monotonic() - started < 0.5 * 10 / 2  # the slow shadow costs nothing
            await eventually(lambda: shadow.counts["2.0.0"] >= 10)
        await eventually(lambda: len(mesh._tables.snapshot("shop").registry.instances) == 1)  # type: ignore[union-attr]
        started = time.monotonic()
        with pytest.raises(NoResponders):
            await mesh.call("shop.which", timeout=5)
        assert time.monotonic() - started < 1.0  # the shadow did not turn it into a timeout


async def test_fault_injection_aborts_and_delays(nats_url: str, controller: Controller) -> None:
    await apply(controller, "[services.shop]\ntimeout = 4\n")
    tally = Tally()
    async with ServiceRunner(V1(tally), nats=nats_url), Mesh(nats_url) as mesh:
        await ready(mesh, 1)
        await apply(
            controller, "[services.shop]\nfault = {abort_code = 503, abort_percent = 100}\n"
        )
        await eventually(lambda: mesh._tables.snapshot("shop").policy.fault is not None)  # type: ignore[union-attr]
        tally.counts.clear()
        with pytest.raises(RemoteError) as caught:
            await mesh.call("shop.which")
        assert caught.value.code == 503
        assert tally.counts["1.0.0"] == 0
        await apply(controller, "[services.shop]\nfault = {delay = 0.2, delay_percent = 100}\n")
        await eventually(lambda: mesh._tables.snapshot("shop").policy.fault.delay == 0.2)  # type: ignore[union-attr]
        started = time.monotonic()
        await mesh.call("shop.which")
        assert time.monotonic() - started >= 0.2
        assert mesh.metrics()["shop"]["faults"] >= 2


async def test_a_failing_service_gets_no_more_than_the_retry_budget(
    nats_url: str, controller: Controller
) -> None:
    await apply(
        controller,
        """
        [services.shop.retries]
        attempts = 5
        retry_on = ["unavailable"]
        budget_ratio = 0.2
        budget_min_per_second = 0
        backoff = 0
        max_backoff = 0
        """,
    )
    tally = Tally()
    async with ServiceRunner(V1(tally), nats=nats_url) as runner, Mesh(nats_url) as mesh:
        await ready(mesh, 1)
        for _ in range(200):
            with pytest.raises(RemoteError):
                await mesh.call("shop.broken")
        # 200 calls; without a budget, 5 attempts each would make 1,000 requests.
        assert 200 <= tally.counts["broken"] <= 200 * 1.2 + 1
        assert mesh.metrics()["shop"]["retry_budget_exhausted"] > 0
        (broken,) = [e for e in runner.stats().endpoints if e.name == "broken"]
        assert broken.data is not None
        assert broken.data["retries_received"] == tally.counts["broken"] - 200


async def test_a_non_idempotent_endpoint_is_never_retried_once_processed(
    nats_url: str, controller: Controller
) -> None:
    await apply(
        controller,
        '[services.shop.retries]\nattempts = 5\nretry_on = ["unavailable", "timeout"]\n',
    )
    tally = Tally()
    async with ServiceRunner(V1(tally), nats=nats_url), Mesh(nats_url) as mesh:
        await ready(mesh, 1)
        for _ in range(20):
            with pytest.raises(RemoteError):
                await mesh.call("shop.charge")
        assert tally.counts["charge"] == 20  # no double side effect
        assert mesh.metrics()["shop"]["retries"] == 0


@service("front", version="1.0.0")
class Front:
    @endpoint(idempotent=True)
    async def go(self, ctx: Context) -> None:
        await ctx.mesh.call("shop.broken")


async def test_only_one_hop_of_a_call_chain_retries(nats_url: str, controller: Controller) -> None:
    await apply(
        controller,
        """
        [services.front.retries]
        attempts = 3
        retry_on = ["unavailable"]
        backoff = 0
        max_backoff = 0
        [services.shop.retries]
        attempts = 3
        retry_on = ["unavailable"]
        backoff = 0
        max_backoff = 0
        """,
    )
    tally = Tally()
    async with (
        ServiceRunner(V1(tally), nats=nats_url),
        ServiceRunner(Front, nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await ready(mesh, 1)
        await eventually(lambda: _has_registry(mesh, "front"))
        tally.counts.clear()
        with pytest.raises(RemoteError):
            await mesh.call("front.go")
        # front is tried 3 times; each try calls shop once (not 3 times): 3, not 9.
        assert tally.counts["broken"] == 3


async def _has_registry(mesh: Mesh, service: str) -> bool:
    with contextlib.suppress(RemoteError):
        await mesh.call(f"{service}.go")
    assert mesh._tables is not None
    snap = mesh._tables.snapshot(service)
    return snap.registry is not None and len(snap.registry.instances) == 1


async def test_hedging_sends_a_second_copy_when_the_first_is_slow(
    nats_url: str, controller: Controller
) -> None:
    await apply(
        controller,
        """
        [services.shop]
        load_balancer = "p2c"
        hedging = {delay = 0.02, max_ratio = 1.0}
        """,
    )
    async with (
        ServiceRunner(V1(Tally(), delay=0.3), nats=nats_url),
        ServiceRunner(V1(Tally()), nats=nats_url),
        Mesh(nats_url) as mesh,
    ):
        await ready(mesh, 2)
        worst = 0.0
        for _ in range(30):
            started = time.monotonic()
            await mesh.call("shop.which")
            worst = max(worst, time.monotonic() - started)
        assert worst < 0.3  # never waited out the slow instance
        assert mesh.metrics()["shop"]["hedges"] > 0
