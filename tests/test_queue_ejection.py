"""Queue-mode outlier ejection: caller detection, the controller's quorum, end to end."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import nats
import pytest
from waits import eventually, leading

from natsmesh import Mesh, ServiceError, ServiceRunner, endpoint, service
from natsmesh.control._controller import Controller
from natsmesh.control._ejector import Ejector
from natsmesh.traffic._resilience import QueueOutliers
from natsmesh.traffic._routes import Outlier
from natsmesh.wire._control import EjectCommand, OutlierReport

# -- the caller's detector ---------------------------------------------------------------


def test_an_instance_failing_its_whole_share_is_reported_once_per_interval() -> None:
    outliers = QueueOutliers(min_failures=3, window=10.0, share=0.5, interval=1.0)
    # 3 instances, 12 calls: an even share is 4; three of them failing is an outlier.
    assert not outliers.failure("bad", 0.0, calls=12, population=3)
    assert not outliers.failure("bad", 0.1, calls=12, population=3)
    assert outliers.failure("bad", 0.2, calls=12, population=3)
    assert not outliers.failure("bad", 0.3, calls=12, population=3)  # reported a moment ago
    assert outliers.failure("bad", 1.3, calls=12, population=3)


def test_an_instance_failing_rarely_is_never_reported() -> None:
    outliers = QueueOutliers(min_failures=3, window=10.0)
    # 1 % of a 1,000-call share, for a long time: never half the share.
    reported = [
        outliers.failure("ok", t * 1.0, calls=3000, population=3) for t in range(0, 1000, 10)
    ]
    assert not any(reported)


def test_failures_leave_the_window() -> None:
    outliers = QueueOutliers(min_failures=3, window=10.0)
    for t in (0.0, 1.0):
        outliers.failure("x", t, calls=3, population=3)
    assert not outliers.failure("x", 20.0, calls=3, population=3)
    assert outliers.recent("x") == 1


def test_the_detector_is_bounded() -> None:
    outliers = QueueOutliers(min_failures=1, window=10.0, share=0.0)
    for n in range(2000):
        outliers.failure(f"i{n}", 0.0, calls=0, population=3)
    assert len(outliers._failures) <= 1024


# -- the controller's quorum -----------------------------------------------------------------

POLICY = Outlier(consecutive_failures=3, base_ejection=10.0, max_ejection_percent=50.0)


def _report(caller: str, instance: str = "bad") -> OutlierReport:
    return OutlierReport(
        service="shop", instance=instance, caller=caller, failures=5, calls=10, window=10.0
    )


def test_one_caller_alone_cannot_eject() -> None:
    ejector = Ejector()
    for t in range(100):
        assert (
            ejector.report(_report("noisy"), t * 0.1, population=["bad", "a", "b"], policy=POLICY)
            is None
        )
    assert ejector.counters.ejections == 0


def test_two_callers_eject_for_a_period_that_grows_with_repeats() -> None:
    ejector = Ejector()
    population = ["bad", "a", "b"]
    assert ejector.report(_report("c1"), 0.0, population=population, policy=POLICY) is None
    first = ejector.report(_report("c2"), 0.5, population=population, policy=POLICY)
    assert first == EjectCommand(service="shop", id="bad", seconds=10.0, ejection=1)
    assert ejector.ejected("shop", 1.0) == {"bad"}
    # While out, reports are ignored.
    assert ejector.report(_report("c1"), 2.0, population=population, policy=POLICY) is None
    assert ejector.counters.ignored == 1
    # Back, and still bad: out again, for twice as long.
    ejector.report(_report("c1"), 11.0, population=population, policy=POLICY)
    second = ejector.report(_report("c2"), 11.1, population=population, policy=POLICY)
    assert second is not None
    assert (second.seconds, second.ejection) == (20.0, 2)
    # Healthy for ten periods: the next ejection is a first one again.
    ejector.report(_report("c1"), 200.0, population=population, policy=POLICY)
    third = ejector.report(_report("c2"), 200.1, population=population, policy=POLICY)
    assert third is not None
    assert third.seconds == 10.0


def test_never_more_than_the_max_ejection_percent() -> None:
    ejector = Ejector()
    population = ["i1", "i2", "i3", "i4"]
    out = []
    for instance in population:
        for caller in ("c1", "c2"):
            command = ejector.report(
                _report(caller, instance), 0.0, population=population, policy=POLICY
            )
            if command is not None:
                out.append(command.id)
    assert len(out) == 2  # half of four
    assert ejector.counters.capped == 2


def test_a_quorum_is_also_a_share_of_the_callers_reporting() -> None:
    ejector = Ejector(caller_share=0.5)
    population = [f"i{n}" for n in range(10)]
    # Six callers report on the service (about other instances): a quorum is 3.
    for n in range(6):
        ejector.report(_report(f"c{n}", f"i{n + 1}"), 0.0, population=population, policy=POLICY)
    assert ejector.quorum("shop", 0.0) == 3


def test_unknown_instances_are_ignored_and_state_follows_the_registry() -> None:
    ejector = Ejector()
    assert ejector.report(_report("c1", "ghost"), 0.0, population=["a"], policy=POLICY) is None
    assert ejector.counters.ignored == 1
    ejector.report(_report("c1", "a"), 0.0, population=["a", "b"], policy=POLICY)
    ejector.forget("shop", ["b"])
    assert ("shop", "a") not in ejector._state


# -- end to end ---------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@service("shop", version="1.0.0")
class Shop:
    def __init__(self, *, bad: bool = False) -> None:
        self.bad = bad
        self.calls = 0

    @endpoint(idempotent=True)
    async def which(self) -> str:
        self.calls += 1
        if self.bad:
            raise ServiceError(503, "unavailable, always")
        return "ok"


ROUTES = """
[services.shop]
load_balancer = "queue"

[services.shop.retries]
attempts = 10
per_try_timeout = 0.5
budget_ratio = 1.0
retry_on = ["no_responders", "overloaded", "timeout", "unavailable"]
backoff = 0.001
max_backoff = 0.01

[services.shop.outlier]
consecutive_failures = 3
base_ejection = 2
max_ejection_percent = 50
"""


async def test_in_queue_mode_a_retry_avoids_the_instance_that_named_itself(
    nats_url: str,
) -> None:
    """One retry only, one instance in three failing: every call succeeds.

    The queue group would hand a retry to the failing instance again one time in
    three; the error reply names the instance, so the retry goes to another by name.
    """
    routes = ROUTES.replace("attempts = 10", "attempts = 2").replace(
        "consecutive_failures = 3", "consecutive_failures = 1000"
    )
    async with Controller(nats_url, lease=1.0) as ctl:
        await leading(ctl)
        assert (await ctl.apply(routes.encode(), allow_empty=True)).ok
        bad, good = Shop(bad=True), [Shop(), Shop()]
        async with contextlib.AsyncExitStack() as stack:
            for shop in (bad, *good):
                await stack.enter_async_context(ServiceRunner(shop, nats=nats_url))
            mesh = await stack.enter_async_context(Mesh(nats_url, name="one-caller"))

            def synced() -> bool:
                snap = mesh._tables.snapshot("shop")  # type: ignore[union-attr]
                count = 0 if snap.registry is None else len(snap.registry.instances)
                return count == 3 and snap.policy is not None and snap.policy.retries.attempts == 2

            await mesh.route_timeout("shop")  # loads its tables, as a first call would
            await eventually(synced)
            before, retried = bad.calls, mesh.metrics().get("shop", {}).get("retries", 0)
            for _ in range(300):
                assert await mesh.call("shop.which") == "ok"
            assert bad.calls - before > 30  # the group did pick it, about one time in three
            assert mesh.metrics()["shop"]["retries"] - retried == bad.calls - before


def _stats(runner: ServiceRunner) -> dict[str, Any]:
    return dict(runner.stats().endpoints[0].data)


async def test_a_failing_instance_leaves_its_queue_group_and_rejoins(nats_url: str) -> None:
    async with Controller(nats_url, lease=1.0) as ctl:
        await leading(ctl)
        assert (await ctl.apply(ROUTES.encode(), allow_empty=True)).ok
        bad, good = Shop(bad=True), [Shop(), Shop()]
        async with contextlib.AsyncExitStack() as stack:
            bad_runner = await stack.enter_async_context(ServiceRunner(bad, nats=nats_url))
            for shop in good:
                await stack.enter_async_context(ServiceRunner(shop, nats=nats_url))
            callers = [
                await stack.enter_async_context(Mesh(nats_url, name=f"caller-{n}"))
                for n in range(2)
            ]
            for mesh in callers:
                # Loads its tables without a call: one before them could meet the bad
                # instance on every try the default policy allows.
                await mesh.route_timeout("shop")

                def synced(mesh: Mesh = mesh) -> bool:
                    snap = mesh._tables.snapshot("shop")  # type: ignore[union-attr]
                    count = 0 if snap.registry is None else len(snap.registry.instances)
                    return count == 3 and snap.policy is not None

                await eventually(synced)

            failures, calls = 0, 0
            errors: list[str] = []
            stop = anyio.Event()

            async def load(mesh: Mesh) -> None:
                nonlocal failures, calls
                while not stop.is_set():
                    try:
                        await mesh.call("shop.which")
                        calls += 1
                    except Exception as exc:
                        failures += 1
                        errors.append(repr(exc))

            async with anyio.create_task_group() as tg:
                for mesh in callers:
                    for _ in range(2):
                        tg.start_soon(load, mesh)
                await eventually(lambda: _stats(bad_runner)["queue_ejected"] == 1)
                ejections = _stats(bad_runner)["queue_ejections"]
                frozen = bad.calls
                served = sum(s.calls for s in good)
                await eventually(lambda: sum(s.calls for s in good) >= served + 300)
                if (
                    _stats(bad_runner)["queue_ejections"] == ejections
                    and _stats(bad_runner)["queue_ejected"]
                ):
                    assert bad.calls == frozen  # out of the queue group: nothing reaches it
                # It rejoins when the period ends, fails again, and is ejected again.
                await eventually(lambda: _stats(bad_runner)["queue_rejoins"] >= 1)
                await eventually(lambda: _stats(bad_runner)["queue_ejections"] >= 2)
                stop.set()
            assert failures == 0, errors
            assert calls > 0
            assert ctl.ejector.counters.ejections >= 2
            assert all(m.metrics()["shop"]["outlier_reports"] >= 1 for m in callers)
            # The registry table shows it unhealthy while it is out.
            table = ctl.registry.table("shop")
            assert {i.id for i in table.instances} >= {bad_runner.id}


async def test_a_report_naming_another_service_than_its_subject_is_dropped(
    nats_url: str,
) -> None:
    async with Controller(nats_url, lease=1.0) as ctl, ServiceRunner(Shop(), nats=nats_url) as r:
        await leading(ctl)
        await eventually(lambda: ctl.registry.instances("shop"))
        nc = await nats.connect(nats_url)
        try:
            report = OutlierReport(
                service="shop", instance=r.id, caller="x", failures=5, calls=5, window=10.0
            )
            await nc.publish("mesh._ctl.outlier.other.x", report.model_dump_json().encode())
            await nc.publish("mesh._ctl.outlier.shop.x", b"{not json")
            await nc.publish("mesh._ctl.outlier.shop.x", report.model_dump_json().encode())
            await nc.flush()
        finally:
            await nc.close()
        await eventually(lambda: ctl.ejector.counters.reports == 1)
        assert ctl.ejector.counters.ejections == 0
