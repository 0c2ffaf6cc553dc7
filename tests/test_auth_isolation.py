"""The compiled access policy, enforced by a real nats-server: every wrong move is denied.

One server per module runs the authorization compiled from a small policy; each
test connects as the identities it needs, with the credentials the compiler wrote.
nats-server reports a denial asynchronously (on the error callback) and silently
drops the message, so each test shows both: the violation was reported, and the
victim received nothing. "Nothing" is proved without waiting for time to pass: a
permitted marker is sent after the denied message was processed (the attacker's
flush returned), and it must be the first thing the victim receives. (natsmesh's
``flush``: nats-py's own may return before the server has seen a subscription.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import nats
import nkeys
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from waits import eventually

from examples.shop.catalog import Catalog
from examples.shop.orders import Orders
from examples.shop.pricing import PricingV1, PricingV2
from natsmesh import Mesh, PermissionDenied, ServiceRunner, UnknownEndpoint
from natsmesh.control._controller import Controller
from natsmesh.security._auth_files import AUTH_CONF, compile_policy
from natsmesh.testing import EmbeddedNats
from natsmesh.transport._credentials import Credentials
from natsmesh.transport._flush import flush
from natsmesh.transport._kv import Entry, Tables, entry_of, read_direct
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Requester, connect

pytestmark = pytest.mark.anyio

POLICY = """
[[identity]]
name = "catalog"
kind = "service"

[[identity]]
name = "pricing"
kind = "service"
calls = ["catalog.get"]

[[identity]]
name = "orders"
kind = "service"
calls = ["pricing.quote", "catalog.get"]

[[identity]]
name = "gateway"
kind = "gateway"
calls = ["*"]

[[identity]]
name = "controller"
kind = "controller"

[[identity]]
name = "ops"
kind = "operator"
auth = "password"

[[identity]]
name = "admin"
kind = "operator"
admin = true
"""
MARKER = b"marker"


@dataclass(frozen=True)
class Secured:
    url: str
    dir: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp = tmp_path_factory.mktemp("policy")
    (tmp / "policy.toml").write_text(POLICY)
    compile_policy(tmp / "policy.toml", tmp / "out")
    server = EmbeddedNats(config_file=tmp / "out" / AUTH_CONF)
    server.start()
    try:
        yield Secured(server.url, tmp / "out")
    finally:
        server.stop()


def identity_env(out: Path, name: str) -> dict[str, str]:
    lines = (out / f"{name}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@dataclass
class Conn:
    """A connection as one identity, and the errors the server reported to it."""

    name: str
    nc: NATS
    errors: list[str] = field(default_factory=list)

    async def denied(self, what: str, subject: str) -> None:
        """Wait until the server has reported a ``what`` violation on ``subject``."""
        needle = f'permissions violation for {what} to "{subject.lower()}"'
        await eventually(lambda: any(needle in e.lower() for e in self.errors))


async def open_conn(url: str, out: Path, name: str) -> Conn:
    env = identity_env(out, name)
    conn = Conn(name, NATS())

    async def on_error(exc: Exception) -> None:
        conn.errors.append(str(exc))

    options: dict[str, str] = {"inbox_prefix": env["NATS_INBOX_PREFIX"]}
    if "NATS_NKEY" in env:
        options["nkeys_seed"] = env["NATS_NKEY"]
    else:
        options.update(user=env["NATS_USER"], password=env["NATS_PASSWORD"])
    await conn.nc.connect(url, name=name, error_cb=on_error, allow_reconnect=False, **options)
    return conn


@contextlib.asynccontextmanager
async def connected(secured: Secured, *names: str) -> AsyncIterator[list[Conn]]:
    conns: list[Conn] = []
    try:
        for name in names:
            conns.append(await open_conn(secured.url, secured.dir, name))
        yield conns
    finally:
        for conn in conns:
            await conn.nc.close()


async def first(sub: Subscription) -> bytes:
    return (await sub.next_msg(timeout=5)).data


# -- services ----------------------------------------------------------------------------


async def test_a_service_cannot_subscribe_to_another_services_subjects(secured: Secured) -> None:
    async with connected(secured, "pricing", "catalog", "gateway") as (pricing, catalog, gateway):
        targets = [
            ("mesh.catalog.get", "catalog"),
            ("mesh.catalog.v1.get", "catalog.v1"),
            ("mesh._i.catalog.c1.get", ""),
            ("$SRV.INFO.catalog", ""),
        ]
        spies = []
        for subject, queue in targets:
            spies.append(await pricing.nc.subscribe(subject))
            spies.append(await pricing.nc.subscribe(subject, queue=queue or "catalog"))
        spies += [
            await pricing.nc.subscribe("mesh.catalog.>", queue="catalog"),
            await pricing.nc.subscribe("mesh.>"),
            await pricing.nc.subscribe(">"),
        ]
        owners = [await catalog.nc.subscribe(s, queue=q) for s, q in targets]
        await flush(catalog.nc)
        for subject, _ in targets:
            await pricing.denied("subscription", subject)
        await pricing.denied("subscription", "mesh.>")
        for subject, _ in targets:
            await gateway.nc.publish(subject, b"secret")
        for owner in owners:
            assert await first(owner) == b"secret"
        # Anything delivered to pricing would be queued before the answer to its ping.
        await flush(pricing.nc)
        assert [s.pending_msgs for s in spies] == [0] * len(spies)


async def test_a_service_takes_its_queue_subjects_only_inside_its_queue_groups(
    secured: Secured,
) -> None:
    async with connected(secured, "catalog", "gateway") as (catalog, gateway):
        plain = await catalog.nc.subscribe("mesh.catalog.get")
        other = await catalog.nc.subscribe("mesh.catalog.get", queue="other")
        subset_group = await catalog.nc.subscribe("mesh.catalog.get", queue="catalog.v1")
        member = await catalog.nc.subscribe("mesh.catalog.get", queue="catalog")
        subset_member = await catalog.nc.subscribe("mesh.catalog.v2.get", queue="catalog.v2")
        await catalog.denied("subscription", "mesh.catalog.get")
        await eventually(lambda: sum("violation" in e for e in catalog.errors) == 3)
        await gateway.nc.publish("mesh.catalog.get", b"1")
        await gateway.nc.publish("mesh.catalog.v2.get", b"2")
        assert await first(member) == b"1"
        assert await first(subset_member) == b"2"
        await flush(catalog.nc)
        assert [plain.pending_msgs, other.pending_msgs, subset_group.pending_msgs] == [0, 0, 0]


async def test_nobody_reads_another_identitys_replies(secured: Secured) -> None:
    async with connected(secured, "orders", "pricing", "gateway") as (orders, pricing, gateway):
        spies = [
            await pricing.nc.subscribe("_INBOX.>"),
            await pricing.nc.subscribe("_INBOX_orders.>"),
            await gateway.nc.subscribe("_INBOX_orders.*"),
        ]

        async def quote(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"42")

        await pricing.nc.subscribe("mesh.pricing.quote", queue="pricing", cb=quote)
        await flush(pricing.nc)
        await pricing.denied("subscription", "_INBOX_orders.>")
        await gateway.denied("subscription", "_INBOX_orders.*")
        reply = await orders.nc.request("mesh.pricing.quote", b"", timeout=5)
        assert reply.data == b"42"
        await flush(pricing.nc)
        await flush(gateway.nc)
        assert [s.pending_msgs for s in spies] == [0, 0, 0]


async def test_a_service_publishes_only_to_what_it_calls(secured: Secured) -> None:
    async with connected(secured, "catalog", "pricing", "orders", "gateway") as conns:
        catalog, pricing, orders, gateway = conns
        victims = {
            "mesh.orders.place": await orders.nc.subscribe("mesh.orders.place", queue="orders"),
            "mesh.orders.v1.place": await orders.nc.subscribe(
                "mesh.orders.v1.place", queue="orders.v1"
            ),
            "mesh._i.orders.o1.place": await orders.nc.subscribe("mesh._i.orders.o1.place"),
            "mesh.catalog.list": await catalog.nc.subscribe("mesh.catalog.list", queue="catalog"),
        }
        await flush(orders.nc)
        await flush(catalog.nc)
        for subject in victims:
            await catalog.nc.publish(subject, b"forged")
            await pricing.nc.publish(subject, b"forged")
        await flush(catalog.nc)
        await flush(pricing.nc)
        for subject, victim in victims.items():
            await catalog.denied("publish", subject)
            await pricing.denied("publish", subject)
            await gateway.nc.publish(subject, MARKER)
            assert await first(victim) == MARKER


async def test_one_request_gets_one_reply(secured: Secured) -> None:
    async with connected(secured, "orders", "pricing") as (orders, pricing):
        requests = await pricing.nc.subscribe("mesh.pricing.quote", queue="pricing")
        inbox = await orders.nc.subscribe("_INBOX_orders.one")
        await flush(pricing.nc)
        await flush(orders.nc)
        await orders.nc.publish("mesh.pricing.quote", b"", reply="_INBOX_orders.one")
        request = await requests.next_msg(timeout=5)
        await pricing.nc.publish(request.reply, b"first")
        await pricing.nc.publish(request.reply, b"second")
        await flush(pricing.nc)
        await pricing.denied("publish", "_INBOX_orders.one")
        assert await first(inbox) == b"first"
        await orders.nc.publish("mesh.pricing.quote", b"", reply="_INBOX_orders.one")
        request = await requests.next_msg(timeout=5)
        await pricing.nc.publish(request.reply, MARKER)
        assert await first(inbox) == MARKER


async def test_a_service_speaks_for_itself_only(secured: Secured) -> None:
    async with connected(secured, "controller", "pricing", "catalog") as conns:
        controller, pricing, catalog = conns
        heard = {
            kind: await controller.nc.subscribe(f"mesh._ctl.{kind}.*")
            for kind in ("announce", "heartbeat", "leave")
        }
        await flush(controller.nc)
        for kind in heard:
            await pricing.nc.publish(f"mesh._ctl.{kind}.catalog", b'{"service":"catalog"}')
        await flush(pricing.nc)
        for kind, sub in heard.items():
            await pricing.denied("publish", f"mesh._ctl.{kind}.catalog")
            await catalog.nc.publish(f"mesh._ctl.{kind}.catalog", MARKER)
            assert await first(sub) == MARKER


# -- the gateway, the controller and operators -------------------------------------------


async def test_the_gateway_sends_requests_and_writes_nothing(secured: Secured) -> None:
    async with connected(secured, "gateway", "controller", "catalog", "admin") as conns:
        gateway, controller, catalog, admin = conns
        tables = await Tables.open(Link(controller.nc), create=True)
        revision = await tables.put("routes.catalog", b"good")
        apply = await controller.nc.subscribe("mesh._ctl.routes.apply")
        announce = await controller.nc.subscribe("mesh._ctl.announce.*")

        async def get(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"product")

        await catalog.nc.subscribe("mesh.catalog.get", queue="catalog", cb=get)
        await flush(catalog.nc)
        await flush(controller.nc)
        assert (await gateway.nc.request("mesh.catalog.get", b"", timeout=5)).data == b"product"

        forged = {
            "mesh._ctl.routes.apply": b"{}",
            "mesh._ctl.announce.catalog": b"{}",
            "$KV.natsmesh.routes.catalog": b"evil",
            "$JS.API.STREAM.PURGE.KV_natsmesh": b"",
            "$JS.API.STREAM.DELETE.KV_natsmesh": b"",
            "$JS.API.CONSUMER.CREATE.KV_natsmesh": b"{}",
            "$JS.API.STREAM.INFO.KV_natsmesh": b"",
        }
        for subject, payload in forged.items():
            await gateway.nc.publish(subject, payload, reply="_INBOX_gateway.js")
        spies = [
            await gateway.nc.subscribe(s) for s in ("mesh.catalog.get", "$SRV.INFO", "mesh._ctl.>")
        ]
        await flush(gateway.nc)
        for subject in forged:
            await gateway.denied("publish", subject)
        await gateway.denied("subscription", "mesh._ctl.>")
        await admin.nc.publish("mesh._ctl.routes.apply", MARKER)
        await catalog.nc.publish("mesh._ctl.announce.catalog", MARKER)
        assert await first(apply) == MARKER
        assert await first(announce) == MARKER
        entry = await tables.get("routes.catalog")
        assert entry is not None
        assert (entry.value, entry.revision) == (b"good", revision)
        # ...and it still reads the tables: a direct get, and the republished changes.
        assert (await read_direct(Link(gateway.nc), "routes.catalog")) == entry
        changes = await gateway.nc.subscribe("mesh._ctl.table.routes.catalog")
        await flush(gateway.nc)
        newer = await tables.put("routes.catalog", b"newer")
        assert entry_of(await changes.next_msg(timeout=5)) == Entry(
            "routes.catalog", b"newer", newer
        )
        await flush(gateway.nc)
        assert [s.pending_msgs for s in spies] == [0, 0, 0]


async def test_operators_show_and_only_admins_apply(secured: Secured) -> None:
    async with connected(secured, "ops", "admin", "controller") as (ops, admin, controller):
        apply = await controller.nc.subscribe("mesh._ctl.routes.apply")
        show = await controller.nc.subscribe("mesh._ctl.status.show")
        await flush(controller.nc)
        await ops.nc.publish("mesh._ctl.routes.apply", b"forged")
        await ops.nc.publish("mesh._ctl.status.show", b"ops")
        await flush(ops.nc)
        await ops.denied("publish", "mesh._ctl.routes.apply")
        await admin.nc.publish("mesh._ctl.routes.apply", MARKER)
        assert await first(apply) == MARKER
        assert await first(show) == b"ops"


async def test_a_request_to_an_unknown_service_fails_fast(secured: Secured) -> None:
    """The gateway may call anything, yet no subscriber anywhere turns this into a timeout."""
    async with connected(secured, "gateway", "catalog", "pricing", "orders", "controller") as c:
        gateway, catalog, pricing, orders, controller = c
        # Every identity subscribes to everything its grants allow that could match.
        for conn, service in ((catalog, "catalog"), (pricing, "pricing"), (orders, "orders")):
            await conn.nc.subscribe(f"mesh.{service}.*", queue=service)
            await conn.nc.subscribe(f"mesh.{service}.*.*", queue=f"{service}.v1")
            await conn.nc.subscribe(f"mesh._i.{service}.*.*")
            await flush(conn.nc)
        await controller.nc.subscribe("mesh._ctl.announce.*")
        await flush(controller.nc)
        for subject in ("mesh.nosuch.get", "mesh.nosuch.v1.get", "mesh._i.nosuch.x1.get"):
            with pytest.raises(NoRespondersError):
                await gateway.nc.request(subject, b"", timeout=30)
        assert not [e for conn in c for e in conn.errors]


async def test_a_call_outside_the_grants_fails_fast_with_permission_denied(
    secured: Secured,
) -> None:
    """NATS drops a refused publish; the mesh client fails it at once, not at its timeout."""
    async with (
        connected(secured, "orders", "catalog") as (orders, catalog),
        ServiceRunner(Catalog(), nats=catalog.nc),
        Mesh(orders.nc) as mesh,
    ):
        assert (await mesh.call("catalog.get", {"id": 1}))["id"] == 1  # granted
        for target in ("catalog.list", "pricing.nosuch", "nosuch.get"):
            with pytest.raises(PermissionDenied) as denied:
                await mesh.call(target, {}, timeout=60)
            assert denied.value.subject.startswith("mesh.")
        # The connection and its other calls are unharmed.
        assert (await mesh.call("catalog.get", {"id": 2}))["id"] == 2


async def test_a_caller_cannot_aim_forged_replies_at_another_callers_requests(
    secured: Secured,
) -> None:
    """NATS lets a requester name any reply subject, and a responder answers there.

    pricing (the attacker) learns orders' reply subject from a request orders sent
    it, then asks catalog (a bystander) to answer into orders' inbox under guessed
    tokens. Were reply tokens guessable, orders would take catalog's answer as
    pricing's. They are 64 random bits.
    """
    async with connected(secured, "orders", "catalog", "pricing") as (orders, catalog, pricing):
        answered: list[str] = []

        async def answer(msg: Msg) -> None:
            answered.append(msg.reply)
            await catalog.nc.publish(msg.reply, b"forged")

        await catalog.nc.subscribe("mesh.catalog.get", queue="catalog", cb=answer)
        quotes = await pricing.nc.subscribe("mesh.pricing.quote", queue="pricing")
        await flush(catalog.nc)
        await flush(pricing.nc)
        outcome: list[object] = []

        async def quote(requester: Requester) -> None:
            outcome.append(
                await requester.request("mesh.pricing.quote", b"", timeout=60, headers=None)
            )

        async with Requester(orders.nc) as requester, anyio.create_task_group() as tg:
            tg.start_soon(quote, requester)
            seen = (await quotes.next_msg(timeout=5)).reply
            prefix, _, token = seen.rpartition(".")
            # The tokens a counter would have used, and the seen token's neighbours.
            guesses = {str(n) for n in range(100)}
            guesses |= {format(int(token, 16) + d, "x") for d in (-2, -1, 1, 2)}
            for guess in guesses:
                await pricing.nc.publish("mesh.catalog.get", b"", reply=f"{prefix}.{guess}")
            await flush(pricing.nc)
            await eventually(lambda: len(answered) == len(guesses))
            await flush(catalog.nc)
            await flush(orders.nc)  # the forged answers have reached orders by now
            assert outcome == []  # none was taken for pricing's answer
            await pricing.nc.publish(seen, b"the real quote")
            await eventually(lambda: outcome)
        assert [m.data for m in outcome] == [b"the real quote"]  # type: ignore[attr-defined]
        assert len(token) == 16


# -- authentication ----------------------------------------------------------------------


async def test_connecting_without_valid_credentials_is_refused(
    secured: Secured, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    attempts: list[dict[str, str]] = [
        {},
        {"user": "ops", "password": "wrong"},
        {"user": "gateway", "password": "anything"},  # an nkey identity has no password
        {"nkeys_seed": str(stranger)},
        {"token": "guess"},
    ]
    for options in attempts:
        errors: list[Exception] = []

        async def on_error(exc: Exception, errors: list[Exception] = errors) -> None:
            errors.append(exc)

        nc = NATS()
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nc.connect(
                secured.url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=on_error,
                **options,  # type: ignore[arg-type]
            )
        await nc.close()


async def test_the_env_files_work_with_natsmesh_connect(secured: Secured) -> None:
    """What a process started with ``<identity>.env`` in its environment would do."""
    for name in ("ops", "gateway"):
        credentials = Credentials.from_env(identity_env(secured.dir, name))
        nc = await connect(secured.url, name=name, credentials=credentials)
        try:
            assert nc.new_inbox().startswith(f"_INBOX_{name}.")
            with pytest.raises(NoRespondersError):
                await nc.request("$SRV.PING.nosuch", b"", timeout=30)
        finally:
            await nc.close()


# -- the example shop, end to end ----------------------------------------------------------


async def test_the_example_shop_runs_under_its_policy(tmp_path: Path) -> None:
    root = Path(__file__).parent.parent
    compile_policy(root / "examples" / "policy.toml", tmp_path)
    async with EmbeddedNats(config_file=tmp_path / AUTH_CONF) as server:
        secured = Secured(server.url, tmp_path)
        names = ("controller", "catalog", "pricing", "pricing", "orders", "gateway")
        async with connected(secured, *names) as conns, contextlib.AsyncExitStack() as stack:
            controller, catalog, pricing1, pricing2, orders, gateway = conns
            await stack.enter_async_context(Controller(controller.nc))
            for target, conn in (
                (Catalog(), catalog),
                (PricingV1(), pricing1),
                (PricingV2(), pricing2),
                (Orders(), orders),
            ):
                await stack.enter_async_context(ServiceRunner(target, nats=conn.nc))
            mesh = await stack.enter_async_context(Mesh(gateway.nc, name="gw", kind="gateway"))

            # The admin applies the shop's routes with the CLI and its identity's env file.
            env = {**os.environ, **identity_env(tmp_path, "admin"), "NATS_URL": server.url}
            routes = str(root / "examples" / "routes.toml")

            async def apply() -> bool:
                done = await anyio.run_process(
                    [sys.executable, "-m", "natsmesh", "routes", "apply", routes],
                    env=env,
                    check=False,
                )
                return done.returncode == 0

            await eventually(apply, within=30)  # until a controller is the leader

            product = await mesh.call("catalog.get", {"id": 1})
            assert product["id"] == 1
            order = await mesh.call(
                "orders.place", {"product_id": 1, "quantity": 2, "customer": "ada"}
            )
            assert (await mesh.call("orders.get", {"id": order["id"]}))["id"] == order["id"]

            async def canary() -> bool:
                # The header match of the applied routes sends this to pricing v2.
                quote = await mesh.call(
                    "pricing.quote",
                    {"product_id": 1, "quantity": 1},
                    headers={"x-canary": "always"},
                )
                return bool(quote["pricing_version"].startswith("2."))

            await eventually(canary)
            # A running service's unknown endpoint has no subscriber either: no responders,
            # which the client turns into "no such endpoint" after asking $SRV.
            with pytest.raises(UnknownEndpoint):
                await mesh.call("orders.nosuch", {}, timeout=30)
            assert not [f"{c.name}: {e}" for c in conns for e in c.errors]
