"""``natsmesh status`` lists the clients that are there: one that left is gone at once,
one that vanished is marked GONE (real processes, a real controller).
"""

from __future__ import annotations

import json
import sys
import textwrap

import anyio
import pytest
from services import Echo
from test_cli import run
from waits import eventually, leading

from natsmesh import Mesh, ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.control._status import Clients
from natsmesh.wire._control import StatusReport

pytestmark = pytest.mark.anyio


def _states(controller: Controller, client: str) -> set[str]:
    return {r.state for r in controller.status().rows if r.client == client}


async def test_a_client_that_leaves_is_gone_from_status_at_once(nats_url: str) -> None:
    async with Controller(nats_url, lease=1.0) as controller, ServiceRunner(Echo(), nats=nats_url):
        await leading(controller)
        async with Mesh(nats_url, name="leaver") as mesh:
            await mesh.call("echo.echo", {"id": 1, "name": "a"})
            await eventually(lambda: _states(controller, "leaver"))
        # It said so on leaving: not listed for the minute it would take to expire.
        await eventually(lambda: not _states(controller, "leaver"), within=2)

        # The same for the CLI, a client of a few hundred milliseconds.
        done = await run("call", "echo.echo", '{"id": 1, "name": "a"}', "--nats", nats_url)
        assert done.returncode == 0, done.stderr
        status = await run("status", "--json", "--nats", nats_url)
        assert "natsmesh-cli" not in {r["client"] for r in json.loads(status.stdout)["rows"]}


VANISHING = textwrap.dedent(
    """
    import sys, anyio, nats
    from natsmesh.client._tables import TableCache
    from natsmesh.transport._link import Link

    async def main():
        nc = await nats.connect(sys.argv[1])
        async with TableCache(Link(nc), client_name="vanishing", report_interval=0.3) as tables:
            await tables.ensure("echo", wait=5)
            await tables._report()
            print("ready", flush=True)
            await anyio.sleep_forever()  # until the test kills it

    anyio.run(main)
    """
)


async def test_a_client_that_vanished_is_marked_gone(nats_url: str) -> None:
    async with Controller(nats_url, lease=1.0) as controller:
        await leading(controller)
        proc = await anyio.open_process([sys.executable, "-c", VANISHING, nats_url])
        try:
            assert proc.stdout is not None
            with anyio.fail_after(20):
                assert (await proc.stdout.receive()).strip() == b"ready"
            await eventually(lambda: _states(controller, "vanishing") == {"SYNCED"})
            proc.kill()  # no last report
            with anyio.fail_after(10):
                await proc.wait()
            await eventually(lambda: _states(controller, "vanishing") == {"GONE"}, within=5)
            shown = await run("status", "--nats", nats_url)
            assert any(
                line.startswith("vanishing") and line.rstrip().endswith("GONE")
                for line in shown.stdout.splitlines()
            ), shown.stdout
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()


def test_the_status_view_over_time() -> None:
    clients = Clients(ttl=60)
    report = StatusReport(client="a", services={"echo": {"routes": 3, "registry": 4}}, interval=10)
    clients.report(report, now=100)

    def states(now: float) -> list[str]:
        return [r.state for r in clients.view(lambda key: 4, now).rows]

    assert states(110) == ["STALE"]  # routes 3 < 4
    assert states(126) == ["GONE"]  # 2.5 intervals without a report
    clients.report(report.model_copy(update={"left": True}), now=126)
    assert states(126) == []
    clients.report(report, now=200)
    clients.expire(now=261)
    assert len(clients) == 0
