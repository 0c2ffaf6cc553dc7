"""Callers count and report only on interest; an observer adds up a real mesh's processes.

Against a real nats-server; the shop runs as a real ``natsmesh serve`` process.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import nats
import pytest
from procs import Proc
from services import Echo, Item

from examples.shop.models import OrderRequest
from natsmesh import Mesh, MeshError, ServiceRunner
from natsmesh.dashboard._observer import Observer
from natsmesh.transport._flush import flush
from natsmesh.wire import _observe

pytestmark = pytest.mark.anyio


async def _no_more(nc: Any, mesh: Mesh, sub: Any) -> None:
    """Whatever ``mesh`` published before now has reached ``sub`` (see below)."""
    # The server handles a connection's messages in order: the mesh's PING comes after
    # its last PUB, and our PING after its PONG, so every delivery to us precedes ours.
    # (natsmesh's flush: nats-py's own PING can overtake PUBs still in its buffer.)
    await flush(mesh.nats)
    await flush(nc)


async def test_a_client_reports_only_while_an_observer_asks(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    sub = await nc.subscribe(_observe.metrics_wildcard("mesh"))
    await flush(nc)  # registered before anything it must see (or must not)
    try:
        async with ServiceRunner(Echo, nats=nats_url), Mesh(nats_url, name="probe") as mesh:
            for i in range(5):
                await mesh.call("echo.echo", Item(id=i, name="x"))
            await _no_more(nc, mesh, sub)
            assert sub.pending_msgs == 0  # nobody asked: nothing was published

            await nc.publish(_observe.metrics_interest("mesh"), b"")
            with anyio.fail_after(5):
                msg = await sub.next_msg(timeout=5)
            assert _observe.sender_of(msg.subject, "mesh").startswith("probe/")
            summary = _observe.parse_summary(msg.data)
            rows = {r[:4]: r[4] for r in summary.rows}
            assert rows[("echo", "echo", "", "ok")] == 5

            # A flood of interest is not a flood of summaries.
            for _ in range(50):
                await nc.publish(_observe.metrics_interest("mesh"), b"garbage" * 10)
            await flush(nc)  # the server has every interest before the mesh's flush below
            await _no_more(nc, mesh, sub)
            assert sub.pending_msgs == 0
    finally:
        await nc.close()


async def test_the_tap_samples_requests_only_while_watched(nats_url: str) -> None:
    async with (
        ServiceRunner(Echo, nats=nats_url),
        Mesh(nats_url, name="probe") as mesh,
        anyio.create_task_group() as tg,
    ):
        observer = Observer(mesh)
        await tg.start(observer.run)
        got: list[dict[str, Any]] = []
        async with observer.tap("echo") as samples:
            with anyio.fail_after(10):
                while not got:
                    await mesh.call("echo.echo", Item(id=1, name="x"))
                    with anyio.move_on_after(0.6):
                        got.append(await samples.receive())
        sample = got[0]
        assert sample["service"] == "echo"
        assert sample["endpoint"] == "echo"
        assert sample["caller"] == "probe"
        assert sample["status"] == 200
        assert sample["latency_ms"] >= 0
        tg.cancel_scope.cancel()


@asynccontextmanager
async def _observing(nats_url: str) -> AsyncIterator[tuple[Mesh, Observer]]:
    async with Mesh(nats_url, name="shopper") as mesh, anyio.create_task_group() as tg:
        observer = Observer(mesh)
        await tg.start(observer.run)
        yield mesh, observer
        tg.cancel_scope.cancel()


#: Seconds between two calls of the background load: it paces the load, it waits for nothing.
PACE = 0.01


async def _shop(mesh: Mesh, until: anyio.Event) -> None:
    while not until.is_set():
        with contextlib.suppress(MeshError):  # load: a failed call is data, not a test error
            await mesh.call(
                "orders.place", OrderRequest(product_id=1, quantity=1, customer="ann"), timeout=2
            )
        await anyio.sleep(PACE)


async def test_the_observer_adds_up_a_mesh_of_processes(nats_url: str) -> None:
    with Proc("serve", "examples.shop:SERVICES", nats_url=nats_url) as shop:
        shop.wait_ready()
        async with _observing(nats_url) as (mesh, observer), anyio.create_task_group() as tg:
            stop = anyio.Event()
            tg.start_soon(_shop, mesh, stop)
            wanted = {("shopper", "orders"), ("orders", "pricing"), ("orders", "catalog")}
            with anyio.fail_after(20):
                while not wanted <= set(observer.aggregate.edges(anyio.current_time())):
                    await observer.updated.wait()
            edges = observer.aggregate.edges(anyio.current_time())
            for edge in wanted:
                assert edges[edge].rps > 0, edge
                assert edges[edge].success == 1.0, edge
            names = {info.name for info in observer.instances.infos}
            assert {"orders", "pricing", "catalog"} <= names

            # The shop's process dies: its instances are gone on the next beats.
            shop.signal(signal.SIGKILL)
            with anyio.fail_after(10):
                while {info.name for info in observer.instances.infos} & names:
                    await observer.updated.wait()
            stop.set()


async def test_garbage_on_every_observed_subject_is_counted_and_dropped(nats_url: str) -> None:
    async with (
        ServiceRunner(Echo, nats=nats_url),
        _observing(nats_url) as (mesh, observer),
    ):
        nc = await nats.connect(nats_url)
        try:
            junk = [
                b"",
                b"\xc1",
                b"\x80" * 100_000,
                msgpack.packb({"v": 1, "e": 1, "z": "", "r": [["a.b", "e", "", "ok", 1, 1.0, []]]}),
                b"\xdd\xff\xff\xff\xff",
                b"x" * (_observe.MAX_SUMMARY + 1),
            ]
            for body in junk:
                await nc.publish(_observe.metrics_subject("mesh", "evil", "x"), body)
                await nc.publish(_observe.tap_subject("mesh", "echo", "x"), body)
            await nc.flush()
            async with observer.tap("echo"):
                for body in junk:  # now someone watches echo: tap batches are parsed too
                    await nc.publish(_observe.tap_subject("mesh", "echo", "x"), body)
                await nc.flush()
                with anyio.fail_after(10):
                    while observer.rejected < 2 * len(junk):
                        await observer.updated.wait()
            assert observer.aggregate.callers() in ([], ["shopper"])
            # Still observing: a real caller's calls are counted after all that.
            await mesh.call("echo.echo", Item(id=1, name="x"))
            with anyio.fail_after(10):
                while "shopper" not in observer.aggregate.callers():
                    await observer.updated.wait()
        finally:
            await nc.close()


def test_natsmesh_top_and_tap_show_a_live_service(nats_url: str) -> None:
    with Proc("serve", "services:Echo", nats_url=nats_url) as echo:
        echo.wait_ready()
        with (
            Proc("tap", "echo", "--count", "1", "--json", nats_url=nats_url) as tap,
            Proc("top", "--once", nats_url=nats_url) as top,
        ):
            while tap.popen.poll() is None:  # the tap asks; each call may be its sample
                with Proc("call", "echo.echo", '{"id": 1, "name": "x"}', nats_url=nats_url) as c:
                    c.popen.wait(30)
            assert tap.popen.returncode == 0
            sample = json.loads(tap.ready_line)
            assert sample["service"] == "echo"
            assert sample["endpoint"] == "echo"
            assert top.popen.wait(60) == 0
            assert top.ready_line.startswith("natsmesh top")
