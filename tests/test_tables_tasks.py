"""The table cache's tasks: first loads shared by their waiters, and nothing left after exit.

A stand-in answers the direct gets (no stream exists, so it is the only responder)
and holds each one until the test lets it go: a load stays in flight exactly as
long as the test needs, without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsmesh.client._tables import TableCache
from natsmesh.transport._flush import flush
from natsmesh.transport._link import Link

pytestmark = pytest.mark.anyio


class HeldGets:
    """Answers ``$JS.API.DIRECT.GET.>`` with "no such key", once ``release`` is set."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self.asked = anyio.Event()
        self.release = anyio.Event()
        self.subjects: list[str] = []

    async def on_get(self, msg: Msg) -> None:
        self.subjects.append(msg.subject)
        self.asked.set()
        await self.release.wait()
        await self._nc.publish(msg.reply, b"", headers={"Status": "404"})


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def gets(nats_url: str) -> AsyncIterator[HeldGets]:
    conn = await nats.connect(nats_url)
    held = HeldGets(conn)
    await conn.subscribe("$JS.API.DIRECT.GET.>", cb=held.on_get)
    await flush(conn)
    yield held
    held.release.set()
    await conn.close()


def _running() -> set[asyncio.Task[object]]:
    """Tasks not done, but nats-py's own (a subscription's reader ends after unsubscribe)."""
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done() and "/nats/" not in task.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    }


async def test_a_cancelled_waiter_leaves_the_first_load_to_the_others(
    nc: NATS, gets: HeldGets, caplog: pytest.LogCaptureFixture
) -> None:
    before = _running()
    async with TableCache(Link(nc), client_name="t", reconcile_interval=60) as cache:
        first = anyio.CancelScope()
        first_gone = anyio.Event()
        got: list[bool] = []

        async def impatient() -> None:
            try:
                with first:
                    await cache.ensure("echo", wait=60)
            finally:
                first_gone.set()

        async def patient() -> None:
            await cache.ensure("echo", wait=60)
            got.append("echo" in cache)

        async with anyio.create_task_group() as tg:
            tg.start_soon(impatient)
            await gets.asked.wait()
            first.cancel()  # the caller that started the load gives up while it is in flight
            await first_gone.wait()
            tg.start_soon(patient)
            tg.start_soon(patient)
            gets.release.set()
        assert first.cancelled_caught  # cancelled while waiting, not after the load
        assert got == [True, True]
        assert cache.loaded
        # One load for everyone: the routes key and the registry key, once each.
        assert len(gets.subjects) == 2
    assert _running() <= before
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_cache_left_with_loads_in_flight_stops_them_and_wakes_their_waiters(
    nc: NATS, gets: HeldGets, caplog: pytest.LogCaptureFixture
) -> None:
    before = _running()
    woken: list[bool] = []
    cache = TableCache(Link(nc), client_name="t", reconcile_interval=60)

    async def waiter() -> None:
        await cache.ensure("echo", wait=60)
        woken.append("echo" in cache)

    async with anyio.create_task_group() as tg, cache:
        tg.start_soon(waiter)
        await gets.asked.wait()
        await cache.ensure("other", wait=0)  # a second load, not waited for
        assert not cache.loaded
        # Left from the task that entered it, with both loads still held by the stand-in.
    assert woken == [False]  # woken by the exit, without tables, not stuck for 60 s
    assert _running() <= before
    await cache.ensure("echo")  # a closed cache answers at once, without tables
    assert "echo" not in cache
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_cache_never_entered_refuses_to_load(nc: NATS) -> None:
    cache = TableCache(Link(nc), client_name="t")
    with pytest.raises(RuntimeError, match="enter the TableCache"):
        await cache.ensure("echo")


async def test_a_first_load_on_a_closed_connection_is_logged_not_raised(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await nats.connect(nats_url)
    async with TableCache(Link(conn), client_name="t", reconcile_interval=60) as cache:
        await conn.close()
        await cache.ensure("echo", wait=5)
        assert "echo" in cache  # over, without tables
    assert "first load of the tables of echo failed" in caplog.text
