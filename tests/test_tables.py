"""The caller's tables against a real nats-server with JetStream: load, watch, reject, reconcile.

The tables are written straight into the KV bucket (no controller), as a controller would.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from services import Echo
from waits import eventually

from natsmesh import DeadlineExceeded, HttpRoute, Mesh, ServiceRunner
from natsmesh.client._tables import TableCache
from natsmesh.control._controller import Controller
from natsmesh.testing import EmbeddedNats
from natsmesh.transport._flush import flush
from natsmesh.transport._kv import Tables
from natsmesh.transport._link import Link
from natsmesh.wire._control import (
    HTTP_KEY,
    HTTP_TABLE,
    Announcement,
    Applied,
    HttpTable,
    RegistryTable,
    RouteTable,
    StatusReport,
    registry_key,
    routes_key,
    status_subject,
)

pytestmark = pytest.mark.anyio


def _route(service: str = "echo", timeout: float = 3.0) -> bytes:
    return RouteTable(service=service, policy={"timeout": timeout}).model_dump_json().encode()


def _registry(service: str = "echo", *ids: str) -> bytes:
    instances = tuple(Announcement(service=service, id=i, version="1", subset="v1") for i in ids)
    return RegistryTable(service=service, instances=instances).model_dump_json().encode()


class Reports:
    """Status reports seen on the status subject; wait for one without sleeping."""

    def __init__(self) -> None:
        self.seen: list[StatusReport] = []
        self._new = anyio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.seen.append(StatusReport.model_validate_json(msg.data))
        self._new.set()
        self._new = anyio.Event()

    async def wait_for(
        self, check: Callable[[StatusReport], bool], *, timeout: float = 2.0
    ) -> StatusReport:
        with anyio.fail_after(timeout):
            while True:
                for report in self.seen:
                    if check(report):
                        return report
                await self._new.wait()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def bucket(nc: NATS) -> Tables:
    return await Tables.open(Link(nc), create=True)


@pytest.fixture
async def reports(nc: NATS) -> AsyncIterator[Reports]:
    found = Reports()
    sub = await nc.subscribe(status_subject("mesh", "*"), cb=found.on_msg)
    await flush(nc)
    yield found
    await sub.unsubscribe()


def _applied(service: str, **want: object) -> Callable[[StatusReport], bool]:
    def check(report: StatusReport) -> bool:
        got = report.services.get(service)
        return got is not None and all(getattr(got, k) == v for k, v in want.items())

    return check


async def test_tables_load_on_the_first_call_and_only_for_called_services(
    nats_url: str, bucket: Tables, reports: Reports
) -> None:
    route_rev = await bucket.put(routes_key("echo"), _route())
    registry_rev = await bucket.put(registry_key("echo"), _registry("echo", "a1"))
    await bucket.put(routes_key("other"), _route("other"))
    async with ServiceRunner(Echo(), nats=nats_url), Mesh(nats_url, name="lazy") as mesh:
        tables = mesh._tables
        assert tables is not None
        assert "echo" not in tables
        assert tables.route("echo") is None

        await mesh.call("echo.echo", {"id": 1, "name": "a"})

        assert tables.route("echo") == RouteTable.model_validate_json(_route())
        registry = tables.registry("echo")
        assert registry is not None
        assert [i.id for i in registry.instances] == ["a1"]
        assert tables.revisions("echo") == Applied(routes=route_rev, registry=registry_rev)
        await reports.wait_for(_applied("echo", routes=route_rev, registry=registry_rev))

        # A service never called is never loaded: its changes reach no report.
        await bucket.put(routes_key("other"), _route("other", 1.0))
        newer = await bucket.put(routes_key("echo"), _route(timeout=2.0))
        await reports.wait_for(_applied("echo", routes=newer))
        assert "other" not in tables
        assert tables.revisions("other") == Applied()
        assert all(set(r.services) == {"echo"} for r in reports.seen)
        assert {(r.client, r.kind) for r in reports.seen} == {("lazy", "client")}


async def test_concurrent_first_callers_share_one_load(nc: NATS, bucket: Tables) -> None:
    await bucket.put(routes_key("echo"), _route())
    gets: list[str] = []

    async def on_api(msg: Msg) -> None:
        if "GET" in msg.subject and b"routes.echo" in msg.subject.encode() + msg.data:
            gets.append(msg.subject)

    await nc.subscribe("$JS.API.>", cb=on_api)
    async with TableCache(Link(nc), client_name="t", reconcile_interval=60) as cache:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(cache.ensure, "echo")
        assert cache.route("echo") is not None
        await flush(nc)
    assert len(gets) == 1


async def test_the_watch_applies_a_change_within_a_second(
    nc: NATS, bucket: Tables, reports: Reports
) -> None:
    await bucket.put(routes_key("echo"), _route())
    # A long reconcile interval: only the watch can bring the change.
    async with TableCache(Link(nc), client_name="t", reconcile_interval=60) as cache:
        await cache.ensure("echo")
        rev = await bucket.put(registry_key("echo"), _registry("echo", "a1", "b2"))
        await reports.wait_for(_applied("echo", registry=rev), timeout=1.0)
        registry = cache.registry("echo")
        assert registry is not None
        assert len(registry.instances) == 2


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"service": "echo"}', "policy"),
        (_route("someone-else"), "someone-else"),
        (_route(timeout=-1), "policy.timeout"),
    ],
)
async def test_a_bad_table_is_rejected_and_the_last_good_one_kept(
    nc: NATS, bucket: Tables, reports: Reports, value: bytes, reason: str
) -> None:
    good = await bucket.put(routes_key("echo"), _route(timeout=1.5))
    async with TableCache(Link(nc), client_name="t", reconcile_interval=60) as cache:
        await cache.ensure("echo")
        bad = await bucket.put(routes_key("echo"), value)

        report = await reports.wait_for(lambda r: bool(r.services["echo"].rejected))
        rejected = report.services["echo"]
        assert rejected.routes == good
        assert f"revision {bad}" in rejected.rejected
        assert reason in rejected.rejected
        assert cache.revisions("echo") == rejected
        assert cache.timeout("echo") == 1.5

        fixed = await bucket.put(routes_key("echo"), _route(timeout=2.5))
        await reports.wait_for(_applied("echo", routes=fixed, rejected=""))
        assert cache.timeout("echo") == 2.5


async def test_status_reports_follow_each_change_and_keep_alive(
    nc: NATS, bucket: Tables, reports: Reports
) -> None:
    async with TableCache(
        Link(nc), client_name="reporter", kind="gateway", reconcile_interval=60, report_interval=0.2
    ) as cache:
        await cache.ensure("echo")
        first = await bucket.put(routes_key("echo"), _route())
        await reports.wait_for(_applied("echo", routes=first, registry=0))
        second = await bucket.put(registry_key("echo"), _registry("echo", "a1"))
        report = await reports.wait_for(_applied("echo", registry=second))
        assert report.services["echo"] == Applied(routes=first, registry=second)
        assert (report.client, report.kind) == ("reporter", "gateway")

        # Nothing changes: the keepalive still reports the same revisions.
        reports.seen.clear()
        await reports.wait_for(_applied("echo", routes=first, registry=second), timeout=1.0)
        assert cache.revisions("echo") == Applied(routes=first, registry=second)


async def test_the_reconcile_rescues_missed_changes(
    nc: NATS, bucket: Tables, reports: Reports
) -> None:
    interval = 0.3
    await bucket.put(routes_key("echo"), _route())
    async with TableCache(Link(nc), client_name="t", reconcile_interval=interval) as cache:
        await cache.ensure("echo")
        # Missed republished changes (a reconnect, a stalled stream leader): the
        # subscriptions go quiet, and only the reconcile's direct gets remain.
        for sub in cache._subs["echo"]:
            await sub.unsubscribe()

        rev = await bucket.put(routes_key("echo"), _route(timeout=0.7))
        await reports.wait_for(_applied("echo", routes=rev), timeout=2 * interval + 0.2)
        assert cache.timeout("echo") == 0.7

        # A deleted key clears the table; the revision stays the last one applied.
        reports.seen.clear()
        await bucket.delete(routes_key("echo"))
        await reports.wait_for(_applied("echo"), timeout=2 * interval + 0.2)
        assert cache.route("echo") is None
        assert cache.revisions("echo").routes == rev
        assert cache.timeout("echo") is None


@pytest.mark.parametrize("jetstream", [True, False], ids=["no-bucket", "no-jetstream"])
async def test_without_a_controller_calls_work(jetstream: bool) -> None:
    async with (
        EmbeddedNats(jetstream=jetstream) as server,
        ServiceRunner(Echo(), nats=server.url),
        Mesh(server.url) as mesh,
    ):
        for i in range(3):
            assert await mesh.call("echo.echo", {"id": i, "name": "a"}) == {"id": i, "name": "a"}
        tables = mesh._tables
        assert tables is not None
        assert "echo" in tables
        assert tables.route("echo") is None
        assert tables.revisions("echo") == Applied()


async def test_a_bucket_created_later_is_found_by_the_reconcile(nc: NATS, reports: Reports) -> None:
    async with TableCache(Link(nc), client_name="t", reconcile_interval=0.3) as cache:
        started = time.monotonic()
        await cache.ensure("echo")
        assert time.monotonic() - started < 0.25  # no bucket: the caller does not wait
        assert cache.route("echo") is None

        bucket = await Tables.open(Link(nc), create=True)
        rev = await bucket.put(routes_key("echo"), _route())
        await reports.wait_for(_applied("echo", routes=rev), timeout=2.0)
        assert cache.route("echo") is not None


async def test_the_route_timeout_is_the_default_budget(nats_url: str, bucket: Tables) -> None:
    await bucket.put(routes_key("echo"), _route(timeout=0.3))
    async with ServiceRunner(Echo(), nats=nats_url), Mesh(nats_url, timeout=5) as mesh:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await mesh.call("echo.slow", {"seconds": 2})
        assert 0.25 < time.monotonic() - started < 1.0

        # An explicit timeout is the caller's word: it wins over the route's.
        reply = await mesh.call("echo.slow", {"seconds": 0.5}, timeout=2)
        assert reply["remaining"] > 1.0


# -- the gateway's http table ----------------------------------------------------------------


def _http(*routes: dict[str, object]) -> bytes:
    return HttpTable(routes=routes).model_dump_json().encode()


GET_PRODUCT = {"method": "GET", "path": "/products/{id}", "target": "catalog.get"}
LIST = {"method": "GET", "path": "/products", "target": "catalog.list", "timeout": 2}


async def test_the_http_table_is_loaded_watched_validated_and_reported(
    nats_url: str, bucket: Tables, reports: Reports
) -> None:
    async def until(check: Callable[[tuple[HttpRoute, ...]], bool]) -> None:
        with anyio.fail_after(5):
            while True:
                seen = len(reports.seen)
                if check(await mesh.http_routes()):
                    return
                await reports.wait_for(lambda _, seen=seen: len(reports.seen) > seen)

    first = await bucket.put(HTTP_KEY, _http(GET_PRODUCT))
    async with (
        Controller(nats_url) as controller,
        Mesh(nats_url, name="gw", kind="gateway") as mesh,
    ):
        routes = await mesh.http_routes(wait=5)
        assert routes == (HttpRoute.model_validate(GET_PRODUCT),)
        assert await mesh.http_routes() is routes  # the same snapshot until a change
        assert mesh.ready
        await reports.wait_for(_applied(HTTP_TABLE, routes=first))

        second = await bucket.put(HTTP_KEY, _http(GET_PRODUCT, LIST))
        await reports.wait_for(_applied(HTTP_TABLE, routes=second))
        assert [r.path for r in await mesh.http_routes()] == ["/products/{id}", "/products"]

        # Two routes of one shape: refused as a whole, the last good table kept.
        clash = {"method": "GET", "path": "/products/{key}", "target": "catalog.get"}
        await bucket.put(HTTP_KEY, _http(GET_PRODUCT, clash))
        report = await reports.wait_for(lambda r: bool(r.services[HTTP_TABLE].rejected))
        assert "conflicts" in report.services[HTTP_TABLE].rejected
        assert report.services[HTTP_TABLE].routes == second
        assert len(await mesh.http_routes()) == 2

        await bucket.delete(HTTP_KEY)
        await until(lambda routes: routes == ())

        reply = await controller.apply(
            b'[[http]]\nmethod = "GET"\npath = "/x"\ntarget = "a.b"\n', allow_empty=True
        )
        assert reply.ok, reply
        await until(lambda routes: [r.path for r in routes] == ["/x"])

        # The controller's view compares the gateway's revision with the http key's.
        def synced() -> list[Any]:
            rows = [r for r in controller.status().rows if r.service == HTTP_TABLE]
            ok = rows and rows[0].state == "SYNCED" and rows[0].applied == rows[0].latest
            return rows if ok else []

        rows = await eventually(synced)
        assert rows[0].kind == "gateway"
        assert rows[0].latest == reply.revisions[HTTP_KEY]


async def test_without_tables_there_are_no_http_routes(nats_url: str) -> None:
    async with Mesh(nats_url, tables=False) as mesh:
        assert await mesh.http_routes() == ()
        assert mesh.ready
        assert await mesh.route_timeout("echo") == mesh.timeout
