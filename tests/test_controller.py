"""The controller against a real nats-server with JetStream: registry, routes, leadership."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import nats
import nats.micro
import pytest
from anyio.abc import TaskStatus
from nats.micro.request import Request
from procs import Proc
from services import Echo
from waits import eventually, leading

from natsmesh import ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.transport._kv import Tables
from natsmesh.transport._link import Link
from natsmesh.wire._control import LEADER_KEY, RegistryTable, control_subject

pytestmark = pytest.mark.anyio

ROUTES = (Path(__file__).parent.parent / "examples" / "routes.toml").read_bytes()


async def registry(url: str, service: str) -> RegistryTable | None:
    nc = await nats.connect(url)
    try:
        entry = await (await Tables.open(Link(nc))).get(f"registry.{service}")
    finally:
        await nc.close()
    if entry is None or entry.value is None:
        return None
    return RegistryTable.model_validate_json(entry.value)


async def ids(url: str, service: str) -> set[str]:
    table = await registry(url, service)
    return set() if table is None else {i.id for i in table.instances}


async def test_instances_join_and_a_graceful_stop_leaves_at_once(nats_url: str) -> None:
    async with Controller(nats_url, expiry=30) as controller:
        await leading(controller)
        async with ServiceRunner(Echo, nats=nats_url) as a, ServiceRunner(Echo, nats=nats_url) as b:
            await eventually(lambda: ids(nats_url, "echo"), within=5)
            await eventually(lambda: _eq(ids(nats_url, "echo"), {a.id, b.id}))
            table = await registry(nats_url, "echo")
            assert table is not None
            one = table.instances[0]
            assert one.subset == "v1"
            assert {e.name for e in one.endpoints} == {"echo", "slow", "whoami"}
            assert next(e for e in one.endpoints if e.name == "echo").idempotent
            echo = next(e for e in one.endpoints if e.name == "echo")
            assert json.loads(echo.request_schema)["title"] == "Item"
            assert json.loads(echo.response_schema)["title"] == "Item"
        # expiry is 30 s: only the leave message can have removed them this fast
        await eventually(lambda: _eq(ids(nats_url, "echo"), set()), within=3)


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_an_instance_killed_without_leaving_expires(nats_url: str) -> None:
    async with Controller(nats_url, expiry=3) as controller:
        await leading(controller)
        with Proc("serve", "services:Echo", nats_url=nats_url) as proc:
            await anyio.to_thread.run_sync(proc.wait_ready)
            await eventually(lambda: ids(nats_url, "echo"))
            proc.signal(signal.SIGKILL)
            started = time.monotonic()
            await eventually(lambda: _eq(ids(nats_url, "echo"), set()), within=10)
            # heartbeats every 2 s, expiry 3 s, checked every 0.75 s
            assert time.monotonic() - started < 6


async def test_route_apply_is_validated_versioned_and_idempotent(nats_url: str) -> None:
    async with Controller(nats_url) as controller:
        await leading(controller)
        first = await controller.apply(ROUTES, allow_empty=True)
        assert first.ok, first
        assert set(first.revisions) == {
            "http",
            "routes.catalog",
            "routes.orders",
            "routes.pricing",
        }
        again = await controller.apply(ROUTES, allow_empty=True)
        assert again.ok
        assert again.revisions == {}
        assert set(again.unchanged) == set(first.revisions)
        bad = await controller.apply(
            b"[services.pricing]\ntimeout = 0\nbogus = 1\n", allow_empty=True
        )
        assert not bad.ok
        paths = {p["path"] for p in bad.problems}
        assert {"services.pricing.timeout", "services.pricing.bogus"} <= paths
        # nothing changed: the same file is still "unchanged"
        assert (await controller.apply(ROUTES, allow_empty=True)).revisions == {}
        changed = ROUTES.replace(b"timeout = 5", b"timeout = 6", 1)
        third = await controller.apply(changed, allow_empty=True)
        assert list(third.revisions) == ["routes.orders"]
        assert third.revisions["routes.orders"] > max(first.revisions.values())


async def test_cli_routes_apply_show_and_errors(nats_url: str, tmp_path: Path) -> None:
    from test_cli import run

    async with Controller(nats_url) as controller:
        await leading(controller)
        good = tmp_path / "routes.toml"
        good.write_bytes(ROUTES)
        done = await run("routes", "apply", "--allow-empty", str(good), "--nats", nats_url)
        assert done.returncode == 0, done.stderr
        assert "routes.pricing: revision" in done.stdout
        done = await run("routes", "apply", "--allow-empty", str(good), "--nats", nats_url)
        assert "unchanged" in done.stdout
        shown = await run("routes", "show", "pricing", "--json", "--nats", nats_url)
        table = json.loads(shown.stdout)
        assert table["routes.pricing"]["policy"]["subsets"][1] == {"name": "v2", "weight": 10}
        for content, needle in (
            (b"not toml at all ][", "<file>"),
            (b'{"services": {"a": {"timeout": "2"}}}', "services.a.timeout"),
            (b"[services.p]\n[[services.p.subsets]]\nname='v1'\nweight=50\n", "100"),
        ):
            bad = tmp_path / "bad.toml"
            bad.write_bytes(content)
            done = await run("routes", "apply", "--allow-empty", str(bad), "--nats", nats_url)
            assert done.returncode == 1, done.stdout
            assert needle in done.stderr
            assert "Traceback" not in done.stderr
        missing = await run("routes", "apply", str(tmp_path / "nope.toml"), "--nats", nats_url)
        assert missing.returncode == 2  # a usage error: the FILE argument
        assert "No such file" in missing.stderr
    nobody = await run("routes", "apply", "--allow-empty", str(good), "--nats", nats_url)
    assert nobody.returncode == 3
    assert "no controller" in nobody.stderr


async def _renewals(nats_url: str, holder: str, count: int) -> None:
    """Wait until ``holder`` has renewed the leader lease ``count`` times (a KV watch)."""
    nc = await nats.connect(nats_url)
    try:
        async with (await Tables.open(Link(nc))).watch(LEADER_KEY) as updates:
            with anyio.fail_after(10):
                while count > 0:
                    entry = await updates.get()
                    if entry.value and json.loads(entry.value)["holder"] == holder:
                        count -= 1
    finally:
        await nc.close()


async def test_two_controllers_one_leader_and_a_takeover(nats_url: str) -> None:
    # Each controller owns a task group: it lives in a task of its own here, so that
    # the first can stop while the second runs (cancel scopes exit in LIFO order).
    async def run(
        controller: Controller, stop: anyio.Event, *, task_status: TaskStatus[None]
    ) -> None:
        async with controller:
            task_status.started()
            await stop.wait()

    first, second = Controller(nats_url, lease=1.0), Controller(nats_url, lease=1.0)
    stop_first, stop_second = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(run, first, stop_first)
        await leading(first)
        await tg.start(run, second, stop_second)
        try:
            await _renewals(nats_url, first.id, 4)  # a full lease, in which the second tried
            assert first.is_leader
            assert not second.is_leader
            async with ServiceRunner(Echo, nats=nats_url) as runner:
                await eventually(lambda: _eq(ids(nats_url, "echo"), {runner.id}))
                stop_first.set()
                await leading(second, within=3)
                # the standby kept listening: it knows the instance without asking
                assert "echo" in second.registry.services()
                assert (await second.apply(ROUTES, allow_empty=True)).ok
        finally:
            stop_first.set()
            stop_second.set()


async def test_kill_9_and_restart_of_the_controller_loses_nothing(nats_url: str) -> None:
    with Proc("controller", nats_url=nats_url) as proc:
        await anyio.to_thread.run_sync(proc.wait_ready)
        from test_cli import run

        async with ServiceRunner(Echo, nats=nats_url) as runner:
            await eventually(lambda: _eq(ids(nats_url, "echo"), {runner.id}))
            routes = Path(__file__).parent.parent / "examples" / "routes.toml"
            done = await run("routes", "apply", "--allow-empty", str(routes), "--nats", nats_url)
            assert done.returncode == 0, done.stderr
            before = max(
                int(line.rsplit(" ", 1)[1])
                for line in done.stdout.splitlines()
                if ": revision " in line
            )
            proc.signal(signal.SIGKILL)
            proc.popen.wait(10)
            # Controller down: the tables stay, calls keep working.
            assert await ids(nats_url, "echo") == {runner.id}
            with Proc("controller", nats_url=nats_url) as again:
                await anyio.to_thread.run_sync(again.wait_ready)
                changed = routes.read_bytes().replace(b"timeout = 5", b"timeout = 7", 1)
                # The new controller answers once it holds the lease (the dead one's
                # lease must run out first).
                done = await eventually(lambda: _apply_ok(run, changed, nats_url), within=10)
                (line,) = [x for x in done.splitlines() if x.startswith("routes.orders")]
                assert int(line.rsplit(" ", 1)[1]) > before  # revisions continue
                assert await ids(nats_url, "echo") == {runner.id}


async def _apply_ok(run: Any, content: bytes, url: str) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".toml") as f:
        f.write(content)
        f.flush()
        done = await run("routes", "apply", "--allow-empty", f.name, "--nats", url)
    return str(done.stdout) if done.returncode == 0 else ""


async def test_foreign_micro_services_join_through_discovery(nats_url: str) -> None:
    nc = await nats.connect(nats_url)

    async def add(req: Request) -> None:
        await req.respond(b"{}")

    svc = await nats.micro.add_service(nc, name="legacy", version="2.3.0")
    await svc.add_endpoint(name="add", handler=add)
    try:
        async with Controller(nats_url, scan_interval=0.5) as controller:
            await leading(controller)
            table = await eventually(lambda: registry(nats_url, "legacy"))
            (instance,) = table.instances
            assert not instance.mesh
            assert instance.subset == "v2"
    finally:
        await svc.stop()
        await nc.close()


@pytest.mark.parametrize(
    ("subject", "payload"),
    [
        ("announce.ok", b"\x00\xff garbage"),
        ("announce.b", b'{"service": "a.b", "id": "x", "version": "1", "subset": "v1"}'),
        ("announce.ok", b'{"service": "ok", "id": "x*", "version": "1", "subset": "v1"}'),
        ("announce.ok", b'{"service": "ok", "id": "x", "version": "1", "subset": "v1", "evil": 1}'),
        # A service speaking for another: the subject (what permissions bind) wins.
        ("announce.mallory", b'{"service": "victim", "id": "x", "version": "1", "subset": "v1"}'),
        ("leave.mallory", b'{"service": "echo", "id": "x"}'),
        ("heartbeat.ok", b"[]"),
        ("leave.x", b'{"service": ">", "id": "x"}'),
        ("status.report.x", b'{"client": "' + b"x" * 300 + b'"}'),
        (
            "outlier.echo.mallory",
            b'{"service": "victim", "instance": "x", "caller": "c",'
            b' "failures": 1, "calls": 1, "window": 1}',
        ),
        ("outlier.echo.mallory", b"\xff" * 300_000),
        ("announce.ok", b"{" * 100_000),
        (
            "announce.big",
            b'{"service": "big", "id": "x", "version": "1", "subset": "v1", '
            b'"metadata": {' + b",".join(b'"k%d": "v"' % i for i in range(100)) + b"}}",
        ),
    ],
)
async def test_garbage_on_control_subjects_is_rejected_and_nothing_breaks(
    nats_url: str, subject: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with Controller(nats_url) as controller:
        await leading(controller)
        nc = await nats.connect(nats_url)
        try:
            for _ in range(3):
                await nc.publish(control_subject("mesh", subject), payload)
            await nc.flush()
            async with ServiceRunner(Echo, nats=nats_url) as runner:
                await eventually(lambda: _eq(ids(nats_url, "echo"), {runner.id}))
        finally:
            await nc.close()
        assert controller.registry.services() == ["echo"]
    rejected = [r for r in caplog.records if "rejected a message" in r.getMessage()]
    assert len(rejected) == 1  # logged once, however often it came


async def test_lease_is_released_on_a_clean_stop(nats_url: str) -> None:
    async with Controller(nats_url) as controller:
        await leading(controller)
    nc = await nats.connect(nats_url)
    try:
        entry = await (await Tables.open(Link(nc))).get(LEADER_KEY)
    finally:
        await nc.close()
    assert entry is not None
    assert entry.value is not None
    assert json.loads(entry.value)["expires"] == 0


async def test_status_shows_each_client_synced_then_stale_then_synced(nats_url: str) -> None:
    from natsmesh import Mesh

    async with Controller(nats_url) as controller, ServiceRunner(Echo, nats=nats_url):
        await leading(controller)
        assert (await controller.apply(b"[services.echo]\ntimeout = 3\n", allow_empty=True)).ok
        async with Mesh(nats_url, name="status-client") as mesh:
            await mesh.call("echo.whoami")

            def state() -> str:
                rows = [r for r in controller.status().rows if r.client == "status-client"]
                return rows[0].state if rows else ""

            await eventually(lambda: state() == "SYNCED")
            (row,) = [r for r in controller.status().rows if r.client == "status-client"]
            assert row.service == "echo"
            assert row.applied == row.latest
            # The client's view moves with the table: a new revision is applied and reported.
            reply = await controller.apply(b"[services.echo]\ntimeout = 4\n", allow_empty=True)
            await eventually(
                lambda: any(
                    r.applied >= reply.revisions["routes.echo"] and r.state == "SYNCED"
                    for r in controller.status().rows
                    if r.client == "status-client"
                )
            )
            from test_cli import run

            done = await run("status", "--json", "--nats", nats_url)
            assert done.returncode == 0, done.stderr
            assert any(r["client"] == "status-client" for r in json.loads(done.stdout)["rows"])
        # It said so on closing: gone from the status at once.
        await eventually(lambda: not state(), within=2)


async def test_status_marks_stale_and_rejected_clients(nats_url: str) -> None:
    from natsmesh.wire._control import Applied, StatusReport

    async with Controller(nats_url) as controller:
        await leading(controller)
        reply = await controller.apply(b"[services.echo]\ntimeout = 3\n", allow_empty=True)
        latest = reply.revisions["routes.echo"]
        nc = await nats.connect(nats_url)
        try:
            for client, applied in (
                ("behind", Applied(routes=latest - 1)),
                ("refused", Applied(routes=latest - 1, rejected="revision 9: bad policy")),
                ("current", Applied(routes=latest)),
            ):
                report = StatusReport(client=client, services={"echo": applied})
                subject = f"mesh._ctl.status.report.{client}"
                await nc.publish(subject, report.model_dump_json().encode())
            await nc.flush()
        finally:
            await nc.close()
        await eventually(lambda: len(controller.status().rows) == 3)
        states = {r.client: r.state for r in controller.status().rows}
        assert states == {"behind": "STALE", "refused": "REJECTED", "current": "SYNCED"}


async def test_a_controller_starts_and_leads_with_the_streams_consumers_exhausted(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13, hole 2: consumers filled up (by anyone who could) took the control
    plane down; a controller must still start, lead, and apply."""
    nc = await nats.connect(nats_url)
    try:
        tables = await Tables.open(Link(nc), create=True)
        await tables.put("registry.echo", b"{not a table")
        js = nc.jetstream()
        info = await js.stream_info("KV_natsmesh")
        info.config.max_consumers = 1
        await js.update_stream(info.config)
        await js.subscribe("$KV.natsmesh.>", ordered_consumer=True)  # the last one left
        async with Controller(nats_url, lease=1.0) as controller:
            await leading(controller)
            assert (await controller.apply(ROUTES, allow_empty=True)).ok
        assert "could not read the stored registry" in caplog.text
    finally:
        await nc.close()


async def test_under_a_policy_only_named_foreign_services_join(nats_url: str) -> None:
    nc = await nats.connect(nats_url)

    async def add(req: Request) -> None:
        await req.respond(b"{}")

    services = []
    for name in ("legacy", "stranger"):
        svc = await nats.micro.add_service(nc, name=name, version="2.3.0")
        await svc.add_endpoint(name="add", handler=add)
        services.append(svc)
    try:
        async with Controller(nats_url, scan_interval=0.5, admitted=["legacy"]) as controller:
            await leading(controller)
            await eventually(lambda: controller.registry.instances("legacy"))
            await controller._members.scan(timeout=1.0)
            assert controller.registry.instances("stranger") == []
            # Without a policy, the same scan takes both.
            controller._members.admitted = None
            await controller._members.scan(timeout=1.0)
            assert controller.registry.instances("stranger")
    finally:
        for svc in services:
            await svc.stop()
        await nc.close()


async def test_a_bucket_made_by_an_older_controller_gets_direct_gets_and_republish(
    nats_url: str,
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.create_key_value(bucket="natsmesh", history=5)  # as before: neither
        async with Controller(nats_url, lease=1.0, prefix="shop") as controller:
            await leading(controller)
            config = (await js.stream_info("KV_natsmesh")).config
            assert config.allow_direct
            assert config.republish is not None
            assert config.republish.dest == "shop._ctl.table.>"
    finally:
        await nc.close()


async def test_an_apply_cut_short_by_a_lost_lease_is_still_answered(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Losing the lease drops the leader's subscriptions, and nats-py cancels a callback
    # under way: the apply it was running must still answer, not leave `routes apply`
    # to time out.
    async with Controller(nats_url, expiry=30) as controller:
        await leading(controller)
        started = anyio.Event()

        async def stalled(data: bytes, *, allow_empty: bool = False) -> Any:
            started.set()
            await anyio.sleep_forever()  # a KV that does not answer: the apply waits on it

        monkeypatch.setattr(controller._routes, "apply", stalled)
        nc = await nats.connect(nats_url)
        replies: list[Any] = []
        try:
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    subject = control_subject("mesh", "routes.apply")
                    replies.append(await nc.request(subject, ROUTES, timeout=10))

                tg.start_soon(ask)
                with anyio.fail_after(5):
                    await started.wait()
                await controller._set_leader(False)  # what the lease keeper does on losing it
        finally:
            await nc.close()
        reply = json.loads(replies[0].data)
        assert reply["ok"] is False
        assert "stopped leading" in reply["error"]
