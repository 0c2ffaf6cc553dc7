"""Zone failover: the pure choice (properties), the route config, and end to end."""

from __future__ import annotations

import collections
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from waits import eventually, leading

from natsmesh import Mesh, ServiceError, ServiceRunner, endpoint, service
from natsmesh.control._controller import Controller
from natsmesh.traffic._routes import RouteConfigError, parse_routes
from natsmesh.traffic._zones import TierCache, pick, tiers, zone_rank
from natsmesh.wire._control import Announcement, EndpointEntry, RegistryTable

ZONES = ["a", "b", "c", "d"]

# -- the pure choice -------------------------------------------------------------------

ROOT = Path(__file__).parent.parent


def test_rank_own_zone_then_the_order_then_any_other() -> None:
    order = ["eu-west", "eu-central"]
    assert zone_rank("us", "us", order) == 0
    assert zone_rank("eu-west", "us", order) == 1
    assert zone_rank("eu-central", "us", order) == 2
    assert zone_rank("ap", "us", order) == 3
    assert zone_rank("", "us", order) == 3
    # Own zone listed too: it is still first.
    assert zone_rank("eu-central", "eu-central", order) == 0
    # No own zone (a standalone server): no instance counts as local.
    assert zone_rank("", "", order) == 3


def test_tiers_group_in_rank_order_and_keep_member_order() -> None:
    got = tiers([("1", "c"), ("2", "a"), ("3", "x"), ("4", "a"), ("5", "y")], "a", ["c"])
    assert got == (("2", "4"), ("1",), ("3", "5"))


members = st.lists(st.tuples(st.text("0123456789", min_size=1, max_size=3), st.sampled_from(ZONES)))


@st.composite
def scenes(draw: st.DrawFn) -> dict[str, Any]:
    pairs = draw(members)
    unique = list(dict((i, z) for i, z in pairs).items())
    ids = [i for i, _ in unique]
    return {
        "pairs": unique,
        "own": draw(st.sampled_from(ZONES)),
        "order": draw(st.lists(st.sampled_from(ZONES), unique=True)),
        "exclude": set(draw(st.lists(st.sampled_from(ids), unique=True))) if ids else set(),
        "ejected": set(draw(st.lists(st.sampled_from(ids), unique=True))) if ids else set(),
        "key": draw(st.none() | st.text(max_size=8)),
        "seed": draw(st.integers(0, 2**32)),
    }


def _pick(scene: dict[str, Any], **change: Any) -> tuple[Any, Any]:
    scene = {**scene, **change}
    tiered = tiers(scene["pairs"], scene["own"], scene["order"])
    got = pick(
        tiered,
        exclude=scene["exclude"],
        ejected=scene["ejected"].__contains__,
        load=lambda i: float(len(i)),
        rng=random.Random(scene["seed"]),
        key=scene["key"],
    )
    return tiered, got


@given(scenes())
def test_never_picks_outside_the_first_non_exhausted_zone(scene: dict[str, Any]) -> None:
    tiered, got = _pick(scene)
    usable = [
        index
        for index, tier in enumerate(tiered)
        if any(i not in scene["exclude"] and i not in scene["ejected"] for i in tier)
    ]
    if usable:
        assert got.instance in tiered[usable[0]]
        assert got.tier == usable[0]
        assert got.instance not in scene["exclude"]
        assert got.instance not in scene["ejected"]


@given(scenes())
def test_never_picks_an_excluded_instance_while_another_is_available(
    scene: dict[str, Any],
) -> None:
    _, got = _pick(scene)
    fresh = [i for i, _ in scene["pairs"] if i not in scene["exclude"]]
    if fresh:
        assert got.instance in fresh
    else:
        assert got.instance is None  # every one tried: the queue group


@given(scenes(), st.text(min_size=1, max_size=8))
def test_hash_stickiness_stays_within_a_zone(scene: dict[str, Any], key: str) -> None:
    scene = {**scene, "key": key, "exclude": set(), "ejected": set()}
    tiered, got = _pick(scene)
    if not tiered:
        return
    # The key's instance depends on its tier alone: other zones coming and going
    # (short of emptying this one) never move it.
    first = tiered[0]
    same_zone_only = [(i, z) for i, z in scene["pairs"] if i in first]
    _, again = _pick(scene, pairs=same_zone_only)
    assert got.instance == again.instance
    assert got.instance in first
    # A change inside another (lower ranked) zone never moves it either.
    ranks = {zone_rank(z, scene["own"], scene["order"]) for i, z in scene["pairs"] if i in first}
    (rank,) = ranks
    if rank < 1 + len(scene["order"]):
        grown = [*scene["pairs"], ("extra-x", "zz")]  # an unlisted zone: ranks last
        _, still = _pick(scene, pairs=grown)
        assert still.instance == got.instance


def test_every_instance_ejected_still_picks_one_not_tried() -> None:
    tiered = tiers([("1", "a"), ("2", "b")], "a", [])
    got = pick(
        tiered,
        exclude={"1"},
        ejected=lambda i: True,
        load=lambda i: 0.0,
        rng=random.Random(1),
    )
    assert got.instance == "2"


def _registry(*members: tuple[str, str]) -> RegistryTable:
    ep = EndpointEntry(name="which", subject="mesh.shop.which")
    return RegistryTable(
        service="shop",
        instances=tuple(
            Announcement(
                service="shop", id=i, version="1.0.0", subset="v1", endpoints=(ep,), zone=z
            )
            for i, z in members
        ),
    )


def test_the_tier_cache_follows_registry_and_order_changes() -> None:
    cache, order = TierCache(), ["b"]
    first = _registry(("x", "a"), ("y", "b"))
    assert cache.get(first, None, "which", "a", order) == (("x",), ("y",))
    assert cache.get(first, None, "which", "a", order) is cache.get(
        first, None, "which", "a", order
    )
    assert cache.get(first, None, "other", "a", order) == ()
    second = _registry(("y", "b"))
    assert cache.get(second, None, "which", "a", order) == (("y",),)
    assert cache.get(second, None, "which", "b", order) == (("y",),)
    assert cache.get(first, "v2", "which", "a", order) == ()


# -- the route config ------------------------------------------------------------------


def test_zones_are_validated_with_precise_paths() -> None:
    ok = parse_routes('[services.shop]\nload_balancer = "p2c"\nzones = ["eu-west", "eu-central"]')
    assert ok.services["shop"].zones == ["eu-west", "eu-central"]
    cases = {
        '[services.shop]\nload_balancer = "queue"\nzones = ["a"]': (
            "services.shop.zones",
            "only used when load_balancer is 'p2c' or 'hash'",
        ),
        '[services.shop]\nload_balancer = "p2c"\nzones = ["a", "b", "a"]': (
            "services.shop.zones[2]",
            "duplicate zone 'a' (also zones[0])",
        ),
        '[services.shop]\nload_balancer = "hash"\nhash_header = "x"\nzones = ["a b"]': (
            "services.shop.zones[0]",
            "invalid zone name",
        ),
        '[services.shop]\nload_balancer = "p2c"\nzones = "a"': (
            "services.shop.zones",
            "valid list",
        ),
    }
    for text, (path, reason) in cases.items():
        with pytest.raises(RouteConfigError) as caught:
            parse_routes(text)
        problems = caught.value.problems
        assert len(problems) == 1, problems
        assert problems[0].path == path
        assert reason in problems[0].reason


def test_the_example_routes_set_a_zone_order() -> None:
    from natsmesh.traffic._routes import load_routes

    config = load_routes(ROOT / "examples" / "routes.toml")
    assert any(policy.zones for policy in config.services.values())


# -- end to end ------------------------------------------------------------------------


@service("shop", version="1.0.0")
class Zoned:
    def __init__(self, zone: str, tally: collections.Counter[str], *, flaky: bool = False) -> None:
        self.zone = zone
        self.tally = tally
        self.flaky = flaky

    @endpoint(idempotent=True)
    async def which(self) -> str:
        self.tally[self.zone] += 1
        return self.zone

    @endpoint(idempotent=True)
    async def flaky_call(self) -> str:
        self.tally[f"flaky-{self.zone}"] += 1
        if self.flaky:
            raise ServiceError(503, "unavailable here")
        return self.zone


ROUTES = """
[services.shop]
load_balancer = "p2c"
zones = ["c", "b"]

[services.shop.retries]
attempts = 4
per_try_timeout = 0.5
budget_ratio = 1.0
retry_on = ["no_responders", "overloaded", "timeout", "unavailable"]
"""


@contextlib.asynccontextmanager
async def zoned_mesh(
    nats_url: str, tally: collections.Counter[str], *, flaky_a: bool = False
) -> AsyncIterator[tuple[Mesh, list[ServiceRunner], Controller]]:
    async with Controller(nats_url, lease=1.0) as ctl:
        await leading(ctl)
        reply = await ctl.apply(ROUTES.encode(), allow_empty=True)
        assert reply.ok, reply
        async with contextlib.AsyncExitStack() as others:
            for zone in ("b", "c"):
                await others.enter_async_context(
                    ServiceRunner(Zoned(zone, tally), nats=nats_url, zone=zone)
                )
            async with contextlib.AsyncExitStack() as entered:
                zone_a = [
                    await entered.enter_async_context(
                        ServiceRunner(Zoned("a", tally, flaky=flaky_a), nats=nats_url, zone="a")
                    )
                    for _ in range(2)
                ]
                async with Mesh(nats_url, name="caller-a", zone="a") as mesh:
                    await mesh.call("shop.which")
                    assert mesh._tables is not None

                    def synced() -> bool:
                        snap = mesh._tables.snapshot("shop")  # type: ignore[union-attr]
                        count = 0 if snap.registry is None else len(snap.registry.instances)
                        return count == 4 and snap.policy is not None

                    await eventually(synced)
                    tally.clear()
                    yield mesh, zone_a, ctl


@pytest.mark.anyio
async def test_calls_stay_in_the_callers_zone_then_fail_over_in_order(nats_url: str) -> None:
    tally: collections.Counter[str] = collections.Counter()
    async with zoned_mesh(nats_url, tally) as (mesh, zone_a, _):
        for _ in range(200):
            assert await mesh.call("shop.which") == "a"
        assert set(tally) == {"a"}, tally

        failures = 0
        stop = anyio.Event()

        async def load() -> None:
            nonlocal failures
            while not stop.is_set():
                try:
                    await mesh.call("shop.which")
                except Exception:
                    failures += 1

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(load)
            await eventually(lambda: tally["a"] >= 250)
            for runner in zone_a:  # every instance of zone a drains and leaves
                await runner.drain()  # (left, as async with blocks are, at the end)
            served_a = tally["a"]
            # Zone c is next in the route's order; b, listed after it, gets nothing.
            await eventually(lambda: tally["c"] >= 200)
            stop.set()
        assert failures == 0
        assert tally["a"] == served_a
        assert tally["b"] == 0, tally


@pytest.mark.anyio
async def test_a_failing_own_zone_fails_over_and_is_counted(nats_url: str) -> None:
    tally: collections.Counter[str] = collections.Counter()
    async with zoned_mesh(nats_url, tally, flaky_a=True) as (mesh, _, _):
        for _ in range(50):
            # Both instances of zone a fail: the call goes on to zone c, never to b.
            assert await mesh.call("shop.flaky_call") == "c"
        # Each instance of zone a was tried until ejected (at most half of the four).
        assert tally["flaky-a"] >= 2
        assert tally["flaky-b"] == 0
        assert mesh.metrics()["shop"]["zone_failovers"] >= 50
