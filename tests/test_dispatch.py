"""The request path against a real nats-server: decode → handle → reply, budgets, errors."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import msgpack
import nats
import pytest
from services import Echo
from shop import Quote, Shop

from natsmesh import (
    Context,
    DeadlineExceeded,
    Mesh,
    ServiceRunner,
    endpoint,
    service,
)
from natsmesh.transport._nats_internals import _HandOver

pytestmark = pytest.mark.anyio


async def test_queue_group_subset_and_instance_subjects(nats_url: str) -> None:
    async with (
        ServiceRunner(Echo, nats=nats_url) as a,
        ServiceRunner(Echo, nats=nats_url) as b,
        Mesh(nats_url) as mesh,
    ):
        pids = set()
        for _ in range(40):
            who = await mesh.call("echo.whoami")
            pids.add(who["pid"])
        stats = [r.stats().endpoints[2] for r in (a, b)]
        assert {s.name for s in stats} == {"whoami"}
        # Both instances share the queue group: both served some of the 40 calls.
        assert all(s.num_requests > 0 for s in stats)
        assert sum(s.num_requests for s in stats) == 40
        nc = mesh.nats
        reply = await nc.request("mesh._i.echo." + b.id + ".whoami", b"", timeout=2)
        assert reply.data
        assert b.stats().endpoints[2].num_requests == stats[1].num_requests + 1
        assert (await nc.request("mesh.echo.v1.whoami", b"", timeout=2)).data


async def test_typed_and_raw_payloads_and_sync_handlers(nats_url: str) -> None:
    async with ServiceRunner(Shop, nats=nats_url), Mesh(nats_url) as mesh:
        assert await mesh.call("shop.quote", "x1", response=Quote) == Quote(sku="x1", cents=100)
        assert await mesh.call("shop.blocking", 21) == 42
        assert await mesh.call("shop.raw", b"\x00\x01\xff", response=bytes) == b"\xff\x01\x00"
        results = []

        async def many() -> None:
            results.append(await mesh.call("shop.blocking", 1))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(many)
        assert results == [2] * 20


async def test_json_request_gets_json_reply(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        nc = await nats.connect(nats_url)
        try:
            msg = await nc.request(
                "mesh.echo.echo",
                b'{"id": 7, "name": "seven"}',
                timeout=2,
                headers={"Content-Type": "application/json"},
            )
        finally:
            await nc.close()
        assert json.loads(msg.data) == {"id": 7, "name": "seven"}
        assert msg.headers is not None
        assert msg.headers["Content-Type"] == "application/json"


async def test_nested_call_inherits_budget_trace_and_names_the_caller(nats_url: str) -> None:
    async with ServiceRunner(Shop, nats=nats_url) as runner, Mesh(nats_url, name="tester") as mesh:
        out = await mesh.call("shop.outer", timeout=2.0)
        # The inner call asked for 10 s but got no more than the outer request had left.
        assert 1.0 < out["inner_remaining"] < 2.0
        assert abs(out["inner_remaining"] - out["outer_remaining"]) < 0.05
        assert out["inner_trace"] == out["outer_trace"]
        assert out["inner_caller"] == f"shop/{runner.id}"
        who = await mesh.call("shop.inner")
        assert who["inner_caller"] == "tester"


async def test_deadline_exceeded_and_the_handler_is_abandoned(nats_url: str) -> None:
    shop = Shop()
    async with ServiceRunner(shop, nats=nats_url), Mesh(nats_url) as mesh:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await mesh.call("shop.stall", timeout=0.3)
        assert time.monotonic() - started < 1.0
        with anyio.fail_after(2):
            await shop.cancelled.wait()  # the service stopped the work once the budget ran out


#: Seconds a handler waits on a timer: it suspends, so its reply comes from its own task
#: (not from the eager first step); that path is what these handlers are for.
STEP_WAIT = 0.01


@service("steps", version="1.0.0", max_concurrency=64)
class Steps:
    """Handlers that finish at once, wait first, fail at once or fail after waiting."""

    @endpoint
    async def at_once(self, n: int) -> int:
        return n + 1

    @endpoint
    async def waits(self, n: int) -> int:
        with anyio.fail_after(5):  # entered in the handler's first step, left in its task
            await anyio.sleep(STEP_WAIT)
        return n + 2

    @endpoint
    async def fails(self, n: int) -> int:
        raise RuntimeError("at once")

    @endpoint
    async def waits_then_fails(self, n: int) -> int:
        await anyio.sleep(STEP_WAIT)
        raise RuntimeError("later")

    @endpoint
    async def whoami(self, ctx: Context) -> dict[str, Any]:
        return {
            "attempt": ctx.attempt,
            "trace": ctx.trace.trace_id,
            "traceparent": ctx.headers.get("traceparent"),
            "caller": ctx.caller,
        }


async def test_handlers_reply_whether_they_finish_at_once_or_wait(nats_url: str) -> None:
    async with ServiceRunner(Steps, nats=nats_url) as runner, Mesh(nats_url) as mesh:
        async with anyio.create_task_group() as tg:
            results: dict[str, Any] = {}

            async def call(endpoint: str, n: int) -> None:
                try:
                    results[f"{endpoint}{n}"] = await mesh.call(f"steps.{endpoint}", n)
                except Exception as exc:
                    results[f"{endpoint}{n}"] = type(exc).__name__

            for n in range(20):
                for name in ("at_once", "waits", "fails", "waits_then_fails"):
                    tg.start_soon(call, name, n)
        for n in range(20):
            assert results[f"at_once{n}"] == n + 1
            assert results[f"waits{n}"] == n + 2
            assert results[f"fails{n}"] == "RemoteError"  # a 500, nothing of the exception
            assert results[f"waits_then_fails{n}"] == "RemoteError"
        stats = {e.name: e for e in runner.stats().endpoints}
        assert stats["fails"].num_errors == stats["waits_then_fails"].num_errors == 20
        assert stats["waits"].num_requests == 20


async def test_absent_headers_carry_their_defaults(nats_url: str) -> None:
    async with ServiceRunner(Steps, nats=nats_url) as runner, Mesh(nats_url, name="me") as mesh:
        # Mesh.call's first try sends no Mesh-Attempt (absent means 1) and, outside
        # any trace, no traceparent: the service starts the trace.
        first = await mesh.call("steps.whoami")
        assert first["attempt"] == 1
        assert first["traceparent"] is None
        assert len(first["trace"]) == 32
        assert set(first["trace"]) != {"0"}
        assert first["caller"] == "me"
        nc = await nats.connect(nats_url)
        try:
            subject = "mesh.steps.whoami"
            bare = await nc.request(subject, b"", timeout=5)  # no headers at all: msgpack
            assert msgpack.unpackb(bare.data)["attempt"] == 1
            assert msgpack.unpackb(bare.data)["traceparent"] is None
            third = await nc.request(
                subject,
                b"",
                timeout=5,
                headers={"Mesh-Attempt": "3", "Content-Type": "application/json"},
            )
            assert json.loads(third.data)["attempt"] == 3
        finally:
            await nc.close()
        stats = {e.name: e for e in runner.stats().endpoints}
        assert stats["whoami"].data["retries_received"] == 1  # only the explicit attempt 3


async def test_requests_reach_the_runtime_as_read_and_garbage_costs_one_error_reply(
    nats_url: str,
) -> None:
    async with ServiceRunner(Echo, nats=nats_url) as runner, Mesh(nats_url) as mesh:
        assert runner._queues is not None
        subs = [*runner._request_subs, *runner._queues.subscriptions]
        assert subs
        assert all(isinstance(s._sub._pending_queue, _HandOver) for s in subs)
        nc = mesh.nats
        subjects = ("mesh.echo.echo", "mesh.echo.v1.echo", f"mesh._i.echo.{runner.id}.echo")
        garbage = (b"\xc1", b"\x80" * 10_000, b"\x91" * 500, msgpack.packb({"id": "x"}))
        for subject in subjects:
            for data in garbage:
                reply = await nc.request(subject, data, timeout=5)
                assert reply.headers is not None
                assert reply.headers["Nats-Service-Error-Code"] in {"400", "413", "422"}
        assert await mesh.call("echo.echo", {"id": 1, "name": "a"}) == {"id": 1, "name": "a"}
        echo = next(e for e in runner.stats().endpoints if e.name == "echo")
        assert echo.num_errors == len(subjects) * len(garbage)


async def test_hostile_headers_get_a_sane_outcome_and_it_keeps_serving(nats_url: str) -> None:
    async with ServiceRunner(Steps, nats=nats_url) as runner:
        nc = await nats.connect(nats_url)
        try:
            for headers in (
                {"Mesh-Budget": "abc"},
                {"Mesh-Budget": "1e400"},
                {"Mesh-Budget": "NaN"},
                {"Mesh-Budget": "9" * 5000},
                {"Mesh-Attempt": "-3"},
                {"Mesh-Attempt": "x" * 4000},
                {"Content-Type": "application/x-evil"},
                {"Content-Type": "application/json; " + "a" * 4000},
                {"traceparent": "00-" + "z" * 32 + "-" + "0" * 16 + "-01"},
            ):
                reply = await nc.request("mesh.steps.at_once", b"\x01", timeout=5, headers=headers)
                assert reply.data  # an answer (the result or an error), never a hang
            assert msgpack.unpackb((await nc.request("mesh.steps.at_once", b"\x01")).data) == 2
        finally:
            await nc.close()
        assert runner.stats().endpoints[0].num_requests == 10


@service("stuck", version="1.0.0")
class Stuck:
    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()

    @endpoint
    async def wait(self) -> None:
        self.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()


async def test_requests_still_running_after_the_drain_timeout_are_cancelled(
    nats_url: str,
) -> None:
    stuck = Stuck()
    async with Mesh(nats_url, tables=False) as mesh, anyio.create_task_group() as tg:

        async def call() -> None:
            with pytest.raises(DeadlineExceeded):
                await mesh.call("stuck.wait", timeout=60)

        async with ServiceRunner(stuck, nats=nats_url, drain_timeout=0.1):
            tg.start_soon(call)
            with anyio.fail_after(5):
                await stuck.started.wait()
        assert stuck.cancelled.is_set()  # by the runner, before it returned
        tg.cancel_scope.cancel()
