"""The control plane under the compiled policy: every hole of issue 13, attacked as its
own identity against a real nats-server, a real controller and real table readers.

Each test first shows the attack is refused (a permission violation reported to the
attacker, or the controller ignoring what the attacker's subject does not vouch for),
then a legitimate party doing the same thing succeeding, so the test fails if the
control plane ignored everyone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import nats.errors
import pytest
from nats.aio.msg import Msg
from test_auth_isolation import MARKER, Conn, Secured, connected, first, secured
from waits import eventually, leading

from natsmesh import Context, Mesh, ServiceRunner, endpoint, service
from natsmesh.control._controller import Controller
from natsmesh.transport._flush import flush
from natsmesh.transport._kv import read_direct
from natsmesh.transport._link import Link
from natsmesh.wire import _micro
from natsmesh.wire._control import Announcement, EjectCommand, OutlierReport, RouteTable

pytestmark = pytest.mark.anyio
__all__ = ["secured"]  # the module-scoped server fixture, shared with test_auth_isolation

ROUTES = b"[services.catalog]\ntimeout = 2\n"


@pytest.fixture
async def controller(secured: Secured) -> AsyncIterator[tuple[Controller, Conn]]:
    async with (
        connected(secured, "controller") as (conn,),
        Controller(conn.nc, lease=1.0, scan_interval=3600) as ctl,
    ):
        await leading(ctl)
        yield ctl, conn


async def _announce(catalog: Conn, *ids: str) -> None:
    for instance in ids:
        announcement = Announcement(service="catalog", id=instance, version="1", subset="v1")
        await catalog.nc.publish(
            "mesh._ctl.announce.catalog", announcement.model_dump_json().encode()
        )
    await catalog.nc.flush()


async def _only_the_controllers_consumers(conn: Conn) -> None:
    consumers = await conn.nc.jetstream().consumers_info("KV_natsmesh")
    assert consumers  # the controller's own watch
    for consumer in consumers:
        assert (consumer.config.deliver_subject or "").startswith("_INBOX_controller.")


# -- 1, 2: consumers --------------------------------------------------------------------


async def test_nobody_but_the_controller_creates_a_consumer_on_the_tables(
    secured: Secured, controller: tuple[Controller, Conn]
) -> None:
    """Hole 1: a push consumer delivering into catalog.list; hole 2: filling the
    stream's consumer limit. Neither orders nor the gateway may create one."""
    _, ctl_conn = controller
    async with connected(secured, "orders", "gateway", "catalog") as (orders, gateway, catalog):
        victim = await catalog.nc.subscribe("mesh.catalog.list", queue="catalog")
        await flush(catalog.nc)
        config = {
            "stream_name": "KV_natsmesh",
            "config": {
                "deliver_subject": "mesh.catalog.list",
                "deliver_group": "catalog",
                "ack_policy": "none",
                "inactive_threshold": 3_600_000_000_000,
            },
        }
        for attacker in (orders, gateway):
            for subject in (
                "$JS.API.CONSUMER.CREATE.KV_natsmesh",
                "$JS.API.CONSUMER.CREATE.KV_natsmesh.evil.$KV.natsmesh.>",
                "$JS.API.CONSUMER.DURABLE.CREATE.KV_natsmesh.evil",
            ):
                await attacker.nc.publish(
                    subject, json.dumps(config).encode(), reply=f"_INBOX_{attacker.name}.x"
                )
            await attacker.nc.flush()
            await attacker.denied("publish", "$JS.API.CONSUMER.CREATE.KV_natsmesh")
            await attacker.denied("publish", "$JS.API.CONSUMER.DURABLE.CREATE.KV_natsmesh.evil")
        await gateway.nc.publish("mesh.catalog.list", MARKER)  # granted: it calls '*'
        assert await first(victim) == MARKER
        # The stream's consumers: the controller's own watch, nobody else's.
        await _only_the_controllers_consumers(ctl_conn)


async def test_a_caller_follows_its_tables_without_a_consumer(
    secured: Secured, controller: tuple[Controller, Conn]
) -> None:
    ctl, ctl_conn = controller
    async with connected(secured, "orders", "pricing") as (orders, pricing):
        reply = await ctl.apply(ROUTES + b"[services.pricing]\ntimeout = 1\n", allow_empty=True)
        assert reply.ok, reply
        # A direct get per key it may read; another service's key is refused.
        entry = await read_direct(Link(orders.nc), "routes.catalog")
        assert entry is not None
        assert RouteTable.model_validate_json(entry.value or b"").policy["timeout"] == 2
        await orders.nc.publish("$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.routes.orders", b"")
        await orders.nc.publish("$JS.API.DIRECT.GET.KV_natsmesh", b'{"last_by_subj": "x"}')
        await orders.denied("publish", "$JS.API.DIRECT.GET.KV_natsmesh.$KV.natsmesh.routes.orders")
        await orders.denied("publish", "$JS.API.DIRECT.GET.KV_natsmesh")
        # The Mesh of pricing follows catalog's table as it changes, with no consumer.
        async with Mesh(pricing.nc, name="pricing") as mesh:
            tables = mesh._tables
            assert tables is not None
            await tables.ensure("catalog", wait=5)
            assert tables.timeout("catalog") == 2
            assert (await ctl.apply(b"[services.catalog]\ntimeout = 4\n", allow_empty=True)).ok
            await eventually(lambda: tables.timeout("catalog") == 4)
        await _only_the_controllers_consumers(ctl_conn)
        assert not [e for e in pricing.errors if "violation" in e.lower()], pricing.errors


# -- 3, 4: ejection and the registry ------------------------------------------------------


async def _report(conn: Conn, instance: str, caller: str) -> None:
    report = OutlierReport(
        service="catalog", instance=instance, caller=caller, failures=50, calls=60, window=10
    )
    await conn.nc.publish(
        f"mesh._ctl.outlier.catalog.{conn.name}", report.model_dump_json().encode()
    )
    await conn.nc.flush()


async def test_one_identity_cannot_eject_another_services_instances(
    secured: Secured, controller: tuple[Controller, Conn]
) -> None:
    ctl, _ = controller
    names = ("catalog", "orders", "orders", "pricing")
    async with connected(secured, *names) as (catalog, orders, orders2, pricing):
        ejects = await catalog.nc.subscribe("mesh._ctl.eject.catalog.*")
        await flush(catalog.nc)
        await _announce(catalog, "c1", "c2")
        await eventually(lambda: len(ctl.registry.instances("catalog")) == 2)
        # Speaking as someone else: the old subject, another identity's subject.
        await orders.nc.publish("mesh._ctl.outlier.catalog", b"{}")
        await orders.nc.publish("mesh._ctl.outlier.catalog.pricing", b"{}")
        await orders.denied("publish", "mesh._ctl.outlier.catalog")
        await orders.denied("publish", "mesh._ctl.outlier.catalog.pricing")
        # Many connections and body names of one identity are one reporter: no quorum.
        for i, conn in enumerate((orders, orders2, orders, orders2)):
            await _report(conn, "c1", caller=f"orders-{i}")
        await eventually(lambda: ctl.ejector.counters.reports == 4)
        assert ctl.ejector.counters.ejections == 0
        # A second identity that calls catalog completes the quorum: c1 goes out.
        await _report(pricing, "c1", caller="pricing")
        command = EjectCommand.model_validate_json(await first(ejects))
        assert (command.service, command.id) == ("catalog", "c1")


async def test_fake_srv_answers_neither_join_the_registry_nor_dilute_the_cap(
    secured: Secured, controller: tuple[Controller, Conn]
) -> None:
    ctl, _ = controller
    async with connected(secured, "catalog", "orders", "pricing") as (catalog, orders, pricing):

        async def fake(msg: Msg) -> None:
            for i in range(30):
                info = _micro.Info(
                    name="catalog",
                    id=f"EVILorders{i}",
                    version="1.0.0",
                    metadata={_micro.MESH_KEY: "0.1.0"},
                    endpoints=[_micro.EndpointInfo(name="get", subject="mesh.orders.steal")],
                )
                await orders.nc.publish(msg.reply, info.model_dump_json().encode())

        await orders.nc.subscribe("$SRV.INFO", cb=fake)
        await flush(orders.nc)
        await _announce(catalog, "c1", "c2")
        await eventually(lambda: len(ctl.registry.instances("catalog")) == 2)
        await ctl._members.scan(timeout=1.0)
        assert sorted(i.id for i in ctl.registry.instances("catalog")) == ["c1", "c2"]
        # Their reports can now eject at most half of the two real instances.
        for conn in (orders, pricing):
            await _report(conn, "c1", caller=conn.name)
            await _report(conn, "c2", caller=conn.name)
        await eventually(lambda: ctl.ejector.counters.reports == 4)
        assert ctl.ejector.counters.ejections == 1
        assert ctl.ejector.counters.capped >= 1


# -- 5: routes.show ------------------------------------------------------------------------


async def test_routes_show_answers_the_operators(
    secured: Secured, controller: tuple[Controller, Conn]
) -> None:
    ctl, _ = controller
    assert (await ctl.apply(ROUTES, allow_empty=True)).ok
    async with connected(secured, "ops", "orders") as (ops, orders):
        reply = await ops.nc.request("mesh._ctl.routes.show", b"catalog", timeout=5)
        shown = json.loads(reply.data)
        assert list(shown) == ["routes.catalog"]
        assert shown["routes.catalog"]["policy"]["timeout"] == 2
        everything = json.loads((await ops.nc.request("mesh._ctl.routes.show", b"", 5)).data)
        assert {"routes.catalog", "http"} <= set(everything)
        with pytest.raises(nats.errors.TimeoutError):
            await orders.nc.request("mesh._ctl.routes.show", b"", timeout=0.5)
        await orders.denied("publish", "mesh._ctl.routes.show")


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (b"#" * (1024 * 1024 + 1), "the limit is 1048576"),
        (b"".join(b"[services.s%d]\ntimeout = 1\n" % i for i in range(1001)), "1001 services"),
        (
            b"".join(
                b'[[http]]\nmethod = "GET"\npath = "/p%d"\ntarget = "catalog.get"\n' % i
                for i in range(1001)
            ),
            "1001 HTTP routes",
        ),
    ],
    ids=["bytes", "services", "http"],
)
async def test_an_oversized_route_file_is_refused_before_anything_is_written(
    controller: tuple[Controller, Conn], config: bytes, error: str
) -> None:
    ctl, ctl_conn = controller
    js = ctl_conn.nc.jetstream()
    before = (await js.stream_info("KV_natsmesh")).state.last_seq
    reply = await ctl.apply(config, allow_empty=True)
    assert not reply.ok
    assert error in reply.error
    assert (await js.stream_info("KV_natsmesh")).state.last_seq == before


async def test_a_second_apply_meanwhile_is_answered_at_once(
    controller: tuple[Controller, Conn],
) -> None:
    ctl, _ = controller
    big = b"".join(b"[services.s%d]\ntimeout = 1\n" % i for i in range(300))
    replies = []

    async def apply(data: bytes) -> None:
        replies.append(await ctl.apply(data, allow_empty=True))

    async with anyio.create_task_group() as tg:
        tg.start_soon(apply, big)
        await anyio.lowlevel.checkpoint()  # the first takes the lock before the second asks
        tg.start_soon(apply, ROUTES)
    assert sorted(r.ok for r in replies) == [False, True]
    assert "another apply is in progress" in next(r.error for r in replies if not r.ok)


# -- the caller, vouched for by the server ------------------------------------------------


@service(name="catalog", version="1.0.0")
class WhoCalls:
    """A catalog that answers who called it."""

    @endpoint
    async def get(self, ctx: Context) -> dict[str, Any]:
        return {
            "caller": ctx.caller,
            "verified": ctx.caller_verified,
            "on_behalf_of": ctx.on_behalf_of,
        }


async def test_the_callee_knows_its_caller_and_nobody_can_pose_as_another(
    secured: Secured, controller: tuple[Controller, Conn]
) -> None:
    async with (
        connected(secured, "catalog", "orders", "gateway") as (catalog, orders, gateway),
        ServiceRunner(WhoCalls(), nats=catalog.nc),
        Mesh(orders.nc, name="orders") as mesh,
        Mesh(gateway.nc, name="gateway", kind="gateway") as edge,
    ):
        # Callers name themselves to services their registry shows to run natsmesh.
        for client in (mesh, edge):
            tables = client._tables
            assert tables is not None
            await tables.ensure("catalog", wait=5)
            await eventually(lambda t=tables: t.registry("catalog") is not None)
        got = await mesh.call("catalog.get", caller="pricing")
        assert got == {"caller": "orders", "verified": True, "on_behalf_of": "pricing"}
        got = await edge.call("catalog.get", caller="key:bob")
        assert got == {"caller": "gateway", "verified": True, "on_behalf_of": "key:bob"}
        # Posing as another identity in the subject: refused by the server.
        await orders.nc.publish("mesh.catalog.get._c.pricing", b"", reply="_INBOX_orders.x")
        await orders.denied("publish", "mesh.catalog.get._c.pricing")
        # The plain subject (nats req, foreign clients): an unverified claim, said so.
        reply = await orders.nc.request(
            "mesh.catalog.get",
            b"{}",
            timeout=5,
            headers={"Content-Type": "application/json", "Mesh-Caller": "pricing"},
        )
        assert json.loads(reply.data) == {
            "caller": "pricing",
            "verified": False,
            "on_behalf_of": None,
        }


async def test_in_dev_mode_the_caller_is_a_claim_and_says_so(nats_url: str) -> None:
    async with (
        ServiceRunner(WhoCalls(), nats=nats_url),
        Mesh(nats_url, name="orders") as mesh,
    ):
        got = await mesh.call("catalog.get", caller="key:bob")
        assert got == {"caller": "key:bob", "verified": False, "on_behalf_of": None}
        assert (await mesh.call("catalog.get"))["caller"] == "orders"
