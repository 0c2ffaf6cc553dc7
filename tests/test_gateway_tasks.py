"""The gateway's background work: directory lookups and scans, owned and stopped.

Stand-ins on ``$SRV.INFO`` (and on the direct gets of the HTTP table) hold each
request until the test lets it go, so a lookup or a scan stays in flight exactly
as long as the test needs, without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import nats
import pytest
from gateway_env import in_lifespan
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway import create_app
from gateway._app import Gateway
from gateway._directory import Directory
from natsmesh import Mesh
from natsmesh.transport._flush import flush
from natsmesh.wire._micro import EndpointInfo, Info

pytestmark = pytest.mark.anyio


class Held:
    """Answers requests on ``subject`` with ``answer``, once ``release`` is set."""

    def __init__(self, nc: NATS, subject: str, answer: bytes) -> None:
        self._nc = nc
        self.subject = subject
        self.answer = answer
        self.asked = anyio.Event()
        self.release = anyio.Event()
        self.seen = 0

    async def on_msg(self, msg: Msg) -> None:
        self.seen += 1
        self.asked.set()
        await self.release.wait()
        if msg.reply:
            await self._nc.publish(msg.reply, self.answer)


@pytest.fixture
async def stand_in(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


async def _hold(conn: NATS, subject: str, answer: bytes = b"\xff not an answer") -> Held:
    held = Held(conn, subject, answer)
    await conn.subscribe(subject, cb=held.on_msg)
    await flush(conn)
    return held


def _running() -> set[asyncio.Task[object]]:
    """Tasks not done, but nats-py's own (a subscription's reader ends after unsubscribe)."""
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done() and "/nats/" not in task.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    }


async def test_lifespan_shutdown_while_the_first_scan_is_in_flight(
    nats_url: str, stand_in: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    scan = await _hold(stand_in, "$SRV.INFO")
    mesh = Mesh(nats_url, name="owned", kind="gateway")
    app = create_app(mesh, owns_mesh=True)
    assert isinstance(app, Gateway)
    app.directory.timeout = 600.0  # the scan ends when the shutdown stops it, not before
    before = _running()
    async with in_lifespan(app) as lifespan:
        await scan.asked.wait()
        await lifespan.shutdown()
    assert not mesh.ready
    assert not app.directory.scanned
    assert _running() <= before
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    scan.release.set()


async def test_a_start_cancelled_half_way_leaves_what_it_entered(
    nats_url: str, stand_in: NATS
) -> None:
    # No stream answers direct gets here: the stand-in holds the HTTP table's first load.
    routes = await _hold(stand_in, "$JS.API.DIRECT.GET.>")
    mesh = Mesh(nats_url, name="owned", kind="gateway")
    app = create_app(mesh, owns_mesh=True)
    assert isinstance(app, Gateway)
    before = _running()
    async with anyio.create_task_group() as tg:
        tg.start_soon(app.start)
        await routes.asked.wait()
        assert mesh.nats.is_connected  # entered, and waiting for the HTTP routes
        tg.cancel_scope.cancel()
    with pytest.raises(RuntimeError):
        mesh.nats  # noqa: B018 (left again: no connection)
    assert _running() <= before
    routes.release.set()
    await app.start()  # nothing was left half-entered: it starts again
    await app.stop()


@pytest.mark.parametrize("entered", [True, False], ids=["owned", "without-owner"])
async def test_a_cancelled_asker_leaves_the_lookup_to_the_others(
    nats_url: str, stand_in: NATS, entered: bool
) -> None:
    echo = Info(name="echo", id="i1", endpoints=[EndpointInfo(name="hi", subject="echo.hi")])
    info = await _hold(stand_in, "$SRV.INFO.echo", echo.model_dump_json().encode())
    async with Mesh(nats_url, name="gw") as mesh:
        directory = Directory(mesh, timeout=600.0)
        before = _running()
        first = anyio.CancelScope()
        found: list[object] = []

        async def impatient() -> None:
            with first:
                await directory.find("echo", "hi")

        async def patient() -> None:
            found.append(await directory.find("echo", "hi"))

        async with AsyncExitStack() as stack:
            if entered:
                await stack.enter_async_context(directory)
            async with anyio.create_task_group() as tg:
                tg.start_soon(impatient)
                await info.asked.wait()
                first.cancel()  # the asker that started the lookup gives up
                tg.start_soon(patient)
                tg.start_soon(patient)
                info.release.set()
        assert first.cancelled_caught
        # The lookup the cancelled asker started went on, and answered the others.
        assert [getattr(doc, "name", None) for doc in found] == ["hi", "hi"]
        assert info.seen == 1  # one lookup, shared
        assert _running() <= before


async def test_leaving_the_directory_wakes_whoever_waits_for_a_lookup(
    nats_url: str, stand_in: NATS
) -> None:
    info = await _hold(stand_in, "$SRV.INFO.echo")
    async with Mesh(nats_url, name="gw") as mesh:
        directory = Directory(mesh, timeout=600.0)
        found: list[object] = []

        async def asker() -> None:
            found.append(await directory.find("echo", "hi"))

        async with anyio.create_task_group() as tg, directory:
            tg.start_soon(asker)
            await info.asked.wait()
        assert found == [None]
        info.release.set()
