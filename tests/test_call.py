"""The attempt loop (client/_call, _exchange, _targets), driven directly against a real
nats-server: instances are plain NATS subscriptions whose behaviour each test sets.

The loop returns raw replies; what it sends where, and how often, is what these
tests look at (the ``Mesh-Attempt`` header each instance saw, the counters).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from procs import Proc
from services import Item
from waits import eventually, leading

from natsmesh import Context, Mesh, ServiceRunner, endpoint, service
from natsmesh.client._call import Caller
from natsmesh.client._resolve import Resolver
from natsmesh.client._running import Call
from natsmesh.client._targets import Route
from natsmesh.control._controller import Controller
from natsmesh.traffic._routes import ServicePolicy
from natsmesh.transport._flush import flush
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Requester
from natsmesh.wire import _headers
from natsmesh.wire._codec import Codec
from natsmesh.wire._control import Announcement, EndpointEntry, RegistryTable
from natsmesh.wire._errors import DeadlineExceeded, NoResponders
from natsmesh.wire._micro import PING_TYPE
from natsmesh.wire._subjects import Subjects

pytestmark = pytest.mark.anyio

SUBJECTS = Subjects("mesh")
SERVICE, ENDPOINT = "svc", "op"


@dataclass
class Instance:
    """One fake instance: answers on its own subject (and the queue group if ``queue``),
    and ``$SRV.PING`` unless ``silent``.
    """

    id: str
    behaviour: str = "ok"  # ok | overloaded | silent | unavailable
    queue: bool = True
    attempts: list[str] = field(default_factory=list)


async def _respond(nc: Client, msg: Msg, data: bytes, headers: dict[str, str]) -> None:
    await nc.publish(msg.reply, data, headers=headers)


@contextlib.asynccontextmanager
async def running(url: str, *instances: Instance) -> AsyncIterator[Client]:
    nc = await nats.connect(url)
    try:
        for inst in instances:

            async def handle(msg: Msg, inst: Instance = inst) -> None:
                inst.attempts.append((msg.headers or {}).get(_headers.ATTEMPT, "1"))
                if inst.behaviour == "silent":
                    return  # holds the request, as a frozen process does
                if inst.behaviour == "overloaded":
                    hdrs = {_headers.ERROR_CODE: "503", _headers.ERROR_KIND: "overloaded"}
                    await _respond(nc, msg, b"", hdrs)
                elif inst.behaviour == "unavailable":
                    hdrs = {_headers.ERROR_CODE: "502", _headers.INSTANCE: inst.id}
                    await _respond(nc, msg, b"", hdrs)
                else:
                    await msg.respond(inst.id.encode())

            async def ping(msg: Msg, inst: Instance = inst) -> None:
                if inst.behaviour != "silent":
                    body = {"type": PING_TYPE, "name": SERVICE, "id": inst.id}
                    await msg.respond(json.dumps(body).encode())

            own = SUBJECTS.instance(SERVICE, inst.id, ENDPOINT)
            # Plain, and with the caller named (as a natsmesh instance takes requests).
            for subject in (own, own + SUBJECTS.caller_suffix("*")):
                await nc.subscribe(subject, cb=handle)
            if inst.queue:
                queue = SUBJECTS.endpoint(SERVICE, ENDPOINT)
                for subject in (queue, queue + SUBJECTS.caller_suffix("*")):
                    await nc.subscribe(subject, queue="q", cb=handle)
            await nc.subscribe(f"$SRV.PING.{SERVICE}", cb=ping)
        await flush(nc)
        yield nc
    finally:
        await nc.close()


def registry(*instances: Instance) -> RegistryTable:
    ep = EndpointEntry(name=ENDPOINT, subject="", idempotent=True)
    return RegistryTable(
        service=SERVICE,
        instances=tuple(
            Announcement(service=SERVICE, id=i.id, version="1", subset="v1", endpoints=(ep,))
            for i in instances
        ),
    )


@contextlib.asynccontextmanager
async def caller(url: str, seed: int = 1) -> AsyncIterator[Caller]:
    nc = await nats.connect(url)
    try:
        async with Requester(nc) as requester:
            yield Caller(
                Link(nc),
                requester,
                SUBJECTS,
                name="tester",
                rng=random.Random(seed),
                resolver=Resolver(Link(nc), SUBJECTS),
            )
    finally:
        await nc.close()


def call(budget: float = 3.0) -> Call:
    route = Route(SERVICE, ENDPOINT, SUBJECTS.endpoint(SERVICE, ENDPOINT), Codec.MSGPACK)
    return Call(
        target=f"{SERVICE}.{ENDPOINT}",
        route=route,
        payload=b"x",
        body=b"x",
        deadline=anyio.current_time() + budget,
        headers={},
        traceparent=None,
        upstream_retries=False,
    )


def policy(**fields: Any) -> ServicePolicy:
    return ServicePolicy.model_validate(fields)


QUEUE_TIMEOUTS = policy(
    load_balancer="queue",
    retries={"attempts": 3, "per_try_timeout": 0.2, "retry_on": ["timeout", "no_responders"]},
)


async def test_overloaded_is_retried_on_another_instance(nats_url: str) -> None:
    busy, ok = Instance("a", "overloaded", queue=False), Instance("b", queue=False)
    async with running(nats_url, busy, ok), caller(nats_url) as runner:
        for _ in range(10):
            _, msg, _ = await runner.run(call(), policy(), registry(busy, ok))
            assert msg.data == b"b"
        # Every try that met the busy one went on to the other, as attempt 2.
        assert busy.attempts == ["1"] * len(busy.attempts)
        assert ok.attempts.count("2") == len(busy.attempts) > 0
        assert runner.traffic[SERVICE].counters.retries == len(busy.attempts)


async def test_an_error_reply_that_no_retry_helps_comes_back_raw(nats_url: str) -> None:
    bad = Instance("a", "unavailable", queue=False)
    async with running(nats_url, bad), caller(nats_url) as runner:
        # Not idempotent in this registry: a 502 is not retried, and the loop hands the
        # reply back for the client to raise its error.
        table = RegistryTable(
            service=SERVICE,
            instances=(
                registry(bad)
                .instances[0]
                .model_copy(update={"endpoints": (EndpointEntry(name=ENDPOINT, subject=""),)}),
            ),
        )
        _, msg, _ = await runner.run(call(), policy(), table)
        assert msg.headers is not None
        assert msg.headers[_headers.ERROR_CODE] == "502"
        assert bad.attempts == ["1"]


async def test_a_queue_mode_retry_after_a_timeout_goes_by_name_to_one_that_answers(
    nats_url: str,
) -> None:
    """Issue 14 defect 1: the queue group's member is frozen (it holds requests and does
    not answer pings); the retry after its timeout must not go back into the group.
    """
    frozen = Instance("c", "silent", queue=True)
    others = [Instance("a", queue=False), Instance("b", queue=False)]
    table = registry(frozen, *others)
    async with running(nats_url, frozen, *others), caller(nats_url) as runner:
        _, msg, _ = await runner.run(call(), QUEUE_TIMEOUTS, table)
        assert msg.data in (b"a", b"b")
        assert frozen.attempts == ["1"]  # tried once, through the group, and never again
        assert [a for o in others for a in o.attempts] == ["2"]
        # What the probe learned holds for a moment: the next call's first try goes by
        # name too, past the silent one.
        _, msg, _ = await runner.run(call(), QUEUE_TIMEOUTS, table)
        assert frozen.attempts == ["1"]
        assert [a for o in others for a in o.attempts] == ["2", "1"]


async def test_no_responders_fails_over_along_the_chain_then_names_every_subset(
    nats_url: str,
) -> None:
    chained = policy(
        subsets=[{"name": "v2", "weight": 100}, {"name": "v1", "weight": 0}],
        failover={"v2": "v1"},
    )
    async with caller(nats_url) as runner:
        with pytest.raises(NoResponders, match="in subsets v2, v1"):
            await runner.run(call(), chained, None)
        assert runner.traffic[SERVICE].counters.failovers == 1


async def test_a_hedge_wins_over_a_silent_first_copy(nats_url: str) -> None:
    silent, fast = Instance("a", "silent", queue=False), Instance("b", queue=False)
    hedged = policy(hedging={"delay": 0.05, "max_ratio": 1.0})
    async with running(nats_url, silent, fast), caller(nats_url, seed=3) as runner:
        for _ in range(8):
            _, msg, _ = await runner.run(call(1.0), hedged, registry(silent, fast))
            assert msg.data == b"b"
        counters = runner.traffic[SERVICE].counters
        assert counters.hedges == len(silent.attempts) > 0
        assert counters.hedge_wins == counters.hedges


async def test_hedges_that_both_fail_raise_one_error_and_leave_no_task_behind(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = Instance("a", "silent", queue=False), Instance("b", "silent", queue=False)
    hedged = policy(hedging={"delay": 0.05, "max_ratio": 1.0})
    async with running(nats_url, a, b), caller(nats_url) as runner:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            with pytest.raises(DeadlineExceeded):
                await runner.run(call(0.3), hedged, registry(a, b))
            gc.collect()
            await anyio.lowlevel.checkpoint()
        assert sorted(a.attempts + b.attempts) == ["1", "1"]  # one copy each
        assert runner.traffic[SERVICE].counters.hedges == 1
        assert "never retrieved" not in caplog.text


async def test_the_retry_budget_stops_a_retry_storm(nats_url: str) -> None:
    busy = [Instance("a", "overloaded", queue=False), Instance("b", "overloaded", queue=False)]
    tight = policy(retries={"budget_ratio": 0.0, "budget_min_per_second": 0.1})  # 1 in 10 s
    async with running(nats_url, *busy), caller(nats_url) as runner:
        for _ in range(3):
            _, msg, _ = await runner.run(call(), tight, registry(*busy))
            assert msg.headers is not None  # the overloaded reply, for Mesh to raise
        metrics = runner.traffic[SERVICE].metrics()
        assert metrics["retries"] == 1
        assert metrics["retry_budget_exhausted"] >= 2


@pytest.mark.parametrize(
    "answers",
    [
        [b"{not json"],
        [b"[" * 900_000],  # deep nesting, near the server's 1 MiB payload limit
        [json.dumps({"type": PING_TYPE, "name": SERVICE, "id": "nosuch"}).encode()],
        [json.dumps({"type": PING_TYPE, "name": SERVICE, "id": "c" * 300}).encode()],
    ],
)
async def test_hostile_ping_answers_do_not_send_a_retry_to_the_frozen_instance(
    nats_url: str, answers: list[bytes]
) -> None:
    """Anyone allowed to subscribe to ``$SRV.PING.svc`` sees the probe's reply subject:
    garbage, oversized and made-up answers are skipped, and the retry still goes by
    name to an instance that answered.
    """
    frozen = Instance("c", "silent", queue=True)
    others = [Instance("a", queue=False), Instance("b", queue=False)]
    table = registry(frozen, *others)
    hostile = await nats.connect(nats_url, max_outstanding_pings=10)

    async def lie(msg: Msg) -> None:
        for answer in answers:
            await hostile.publish(msg.reply, answer)

    try:
        await hostile.subscribe(f"$SRV.PING.{SERVICE}", cb=lie)
        await flush(hostile)
        async with running(nats_url, frozen, *others), caller(nats_url) as runner:
            _, msg, _ = await runner.run(call(), QUEUE_TIMEOUTS, table)
            assert msg.data in (b"a", b"b")
            assert frozen.attempts == ["1"]
    finally:
        await hostile.close()


# -- end to end: a SIGSTOPped instance process in queue mode (issue 14 defect 1) ----------

FROZEN_ROUTES = """
[services.echo]
load_balancer = "queue"
[services.echo.retries]
attempts = 3
per_try_timeout = 0.3
retry_on = ["no_responders", "overloaded", "timeout", "unavailable"]
"""


@service("echo", version="1.0.0")
class RecordingEcho:
    """The echo service's ``echo`` endpoint, noting the attempt of every request."""

    def __init__(self) -> None:
        self.attempts: list[int] = []

    @endpoint(idempotent=True)
    async def echo(self, item: Item, ctx: Context) -> Item:
        self.attempts.append(ctx.attempt)
        return item


@pytest.mark.slow
async def test_a_frozen_process_in_queue_mode_meets_no_retry(nats_url: str) -> None:
    good = [RecordingEcho(), RecordingEcho()]
    async with contextlib.AsyncExitStack() as stack:
        ctl = await stack.enter_async_context(Controller(nats_url, lease=1.0))
        await leading(ctl)
        assert (await ctl.apply(FROZEN_ROUTES.encode(), allow_empty=True)).ok
        frozen = stack.enter_context(Proc("serve", "services:Echo", nats_url=nats_url))
        await anyio.to_thread.run_sync(frozen.wait_ready)
        for echo in good:
            await stack.enter_async_context(ServiceRunner(echo, nats=nats_url))
        mesh = await stack.enter_async_context(Mesh(nats_url, name="frozen-test"))
        await mesh.route_timeout("echo")

        def synced() -> bool:
            snap = mesh._tables.snapshot("echo")  # type: ignore[union-attr]
            count = 0 if snap.registry is None else len(snap.registry.instances)
            return count == 3 and snap.policy is not None

        await eventually(synced)
        frozen.signal(signal.SIGSTOP)
        stack.callback(frozen.signal, signal.SIGCONT)
        for n in range(30):
            assert await mesh.call("echo.echo", Item(id=n, name="x"), response=Item) == Item(
                id=n, name="x"
            )
        seen = [a for echo in good for a in echo.attempts]
        assert 2 in seen  # the frozen one was met (through the queue group)...
        assert 3 not in seen  # ...and no retry went back to it
        assert len(seen) == 30
