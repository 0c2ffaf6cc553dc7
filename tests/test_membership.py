"""An instance's queue-group membership against a real nats-server: eject, rejoin, hostile commands.

The commands are published here as the controller would (no access policy in
these tests; ``test_auth_isolation`` checks that only the controller may).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import nats
import nats.errors
import pytest
from services import Echo
from waits import eventually

from natsmesh import ServiceRunner
from natsmesh.wire._control import EjectCommand, eject_subject

pytestmark = pytest.mark.anyio

ITEM = {"id": 1, "name": "one"}


async def _eject(nc: Any, runner: ServiceRunner, seconds: float, **fields: Any) -> None:
    body = EjectCommand(service="echo", id=runner.id, seconds=seconds).model_dump()
    await nc.publish(
        eject_subject("mesh", "echo", runner.id), json.dumps({**body, **fields}).encode()
    )
    await nc.flush()


def _queue(runner: ServiceRunner) -> dict[str, Any]:
    return dict(runner.stats().endpoints[0].data)


async def _answers(nc: Any, subject: str) -> bool:
    try:
        await nc.request(subject, b"", timeout=5)
    except nats.errors.NoRespondersError:
        return False
    return True


async def test_an_eject_command_takes_it_out_of_the_queue_groups_until_it_rejoins(
    nats_url: str,
) -> None:
    nc = await nats.connect(nats_url)
    beats: list[dict[str, Any]] = []

    async def on_beat(msg: Any) -> None:
        beats.append(json.loads(msg.data))

    try:
        await nc.subscribe("mesh._ctl.heartbeat.echo", cb=on_beat)
        async with ServiceRunner(Echo, nats=nats_url, heartbeat=0.1) as runner:
            own = f"mesh._i.echo.{runner.id}.whoami"
            await _eject(nc, runner, 30)
            await eventually(lambda: _queue(runner)["queue_ejected"] == 1)
            # Out of both queue groups, still reachable by its own subject and $SRV.
            assert not await _answers(nc, "mesh.echo.whoami")
            assert not await _answers(nc, "mesh.echo.v1.whoami")
            assert await _answers(nc, own)
            assert await _answers(nc, f"$SRV.PING.echo.{runner.id}")
            await eventually(lambda: beats and beats[-1]["healthy"] is False)
            # A second command while out moves the time it rejoins (from now): soon.
            await _eject(nc, runner, 0.2)
            await eventually(lambda: _queue(runner)["queue_ejected"] == 0)
            assert await _answers(nc, "mesh.echo.whoami")
            assert await _answers(nc, "mesh.echo.v1.whoami")
            assert _queue(runner)["queue_ejections"] == 1  # the second one only moved it
            assert _queue(runner)["queue_rejoins"] == 1
            await eventually(lambda: beats[-1]["healthy"] is True)
    finally:
        await nc.close()


async def test_hostile_eject_commands_change_nothing(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "natsmesh.service")
    nc = await nats.connect(nats_url)
    try:
        async with ServiceRunner(Echo, nats=nats_url) as runner:
            subject = eject_subject("mesh", "echo", runner.id)
            for body in (
                b"",
                b"\x00\xff garbage",
                b"[" * 100_000,  # deep nesting
                b'{"service": "echo", "id": "' + b"x" * 300_000 + b'", "seconds": 1}',
                json.dumps({"service": "echo", "id": runner.id, "seconds": -1}).encode(),
                json.dumps({"service": "echo", "id": runner.id, "seconds": 1e9}).encode(),
                json.dumps({"service": "echo", "id": "someone-else", "seconds": 5}).encode(),
                json.dumps({"service": "other", "id": runner.id, "seconds": 5}).encode(),
                json.dumps({"service": "echo", "id": runner.id, "seconds": 5, "x": 1}).encode(),
            ):
                await nc.publish(subject, body)
            await _eject(nc, runner, 5)  # sanity: a valid one, last, is carried out...
            await eventually(lambda: _queue(runner)["queue_ejected"] == 1)
            assert _queue(runner)["queue_ejections"] == 1  # ...and it was the only one
            assert "ignored an invalid eject command" in caplog.text
            assert "ignored an oversized eject command" in caplog.text
    finally:
        await nc.close()


async def test_another_instances_subject_does_not_reach_it(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        async with ServiceRunner(Echo, nats=nats_url) as a, ServiceRunner(Echo, nats=nats_url) as b:
            await _eject(nc, b, 30)
            await eventually(lambda: _queue(b)["queue_ejected"] == 1)
            assert _queue(a)["queue_ejected"] == 0
            for _ in range(10):  # the queue group is a's alone now
                reply = await nc.request("mesh.echo.whoami", b"", timeout=5)
                assert reply.data
            assert a.stats().endpoints[2].num_requests == 10
    finally:
        await nc.close()


async def test_draining_while_ejected_does_not_wait_for_the_rejoin(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        runner = ServiceRunner(Echo, nats=nats_url)
        with anyio.fail_after(20):  # the hour-long wait is cancelled, not awaited
            async with runner:
                await _eject(nc, runner, 3600)
                await eventually(lambda: _queue(runner)["queue_ejected"] == 1)
        assert runner._queues is not None
        assert runner._queues.rejoins == 0
        await _eject(nc, runner, 1)  # after the drain: nobody listens, nothing breaks
        assert not await _answers(nc, f"$SRV.PING.echo.{runner.id}")
    finally:
        await nc.close()


async def test_commands_flooding_in_while_it_leaves_and_rejoins(nats_url: str) -> None:
    """Many commands at once: one loop makes every change, in order, and ends joined."""
    nc = await nats.connect(nats_url)
    try:
        async with ServiceRunner(Echo, nats=nats_url) as runner:
            for _ in range(50):
                await _eject(nc, runner, 0.05)
                await anyio.lowlevel.checkpoint()
            await eventually(lambda: _queue(runner)["queue_ejected"] == 0)
            stats = _queue(runner)
            assert 1 <= stats["queue_ejections"] == stats["queue_rejoins"]
            assert await _answers(nc, "mesh.echo.whoami")
            assert runner._queues is not None
            # Queue group and subset, each plain and with the caller named: four per endpoint.
            assert len(runner._queues.subscriptions) == 4 * len(runner.spec.endpoints)
    finally:
        await nc.close()
