"""What an instance says about itself, against a real nats-server: $SRV, zone, heartbeats."""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import nats
import pytest
from services import Echo
from shop import Shop
from waits import eventually

from natsmesh import (
    Mesh,
    ServiceRunner,
)
from natsmesh.transport._flush import flush

pytestmark = pytest.mark.anyio
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


async def _srv(nc: Any, subject: str, count: int) -> list[dict[str, Any]]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    answers = []
    with anyio.fail_after(5):
        for _ in range(count):
            msg = await sub.next_msg(timeout=5)
            answers.append(json.loads(msg.data))
    await sub.unsubscribe()
    return answers


async def test_srv_ping_info_stats_shapes(nats_url: str) -> None:
    async with ServiceRunner(Shop(), nats=nats_url) as runner, Mesh(nats_url) as mesh:
        await mesh.call("shop.quote", "abc")
        nc = mesh.nats
        for verb, kind in (("PING", "ping"), ("INFO", "info"), ("STATS", "stats")):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.shop", f"$SRV.{verb}.shop.{runner.id}"):
                (answer,) = await _srv(nc, subject, 1)
                assert answer["type"] == f"io.nats.micro.v1.{kind}_response"
                assert answer["name"] == "shop"
                assert answer["id"] == runner.id
                assert answer["version"] == "2.1.0"
                assert answer["metadata"]["team"] == "core"
                assert answer["metadata"]["natsmesh.subset"] == "v2"
        (info,) = await _srv(nc, "$SRV.INFO.shop", 1)
        assert info["description"] == "a shop"
        eps = {e["name"]: e for e in info["endpoints"]}
        assert set(eps) == {"quote", "blocking", "raw", "stall", "outer", "inner"}
        quote = eps["quote"]
        assert quote["subject"] == "mesh.shop.quote"
        assert quote["queue_group"] == "shop"
        assert quote["metadata"]["natsmesh.idempotent"] == "true"
        assert eps["blocking"]["metadata"]["natsmesh.idempotent"] == "false"
        assert json.loads(quote["metadata"]["natsmesh.response_schema"])["title"] == "Quote"
        assert json.loads(quote["metadata"]["natsmesh.request_schema"]) == {"type": "string"}
        assert all(isinstance(v, str) for e in eps.values() for v in e["metadata"].values())
        (stats,) = await _srv(nc, "$SRV.STATS.shop", 1)
        assert RFC3339_UTC.fullmatch(stats["started"])
        st = {e["name"]: e for e in stats["endpoints"]}
        assert st["quote"]["num_requests"] == 1
        assert st["quote"]["num_errors"] == 0
        assert st["quote"]["last_error"] == ""
        assert isinstance(st["quote"]["processing_time"], int)
        assert st["quote"]["processing_time"] > 0
        assert st["quote"]["average_processing_time"] == st["quote"]["processing_time"]
        assert st["raw"]["num_requests"] == 0
        assert st["raw"]["average_processing_time"] == 0


async def test_srv_is_answered_by_every_instance(nats_url: str) -> None:
    async with (
        ServiceRunner(Shop, nats=nats_url) as a,
        ServiceRunner(Shop, nats=nats_url) as b,
        Mesh(nats_url) as mesh,
    ):
        answers = await _srv(mesh.nats, "$SRV.PING.shop", 2)
        assert {x["id"] for x in answers} == {a.id, b.id}
        infos = await mesh.services("shop")
        assert {i.id for i in infos} == {a.id, b.id}


async def test_zone_is_configured_or_the_nats_cluster_name(tmp_path: Any) -> None:
    from natsmesh.testing import EmbeddedNats

    conf = tmp_path / "cluster.conf"
    conf.write_text('cluster { name: "east", listen: "127.0.0.1:-1" }\n')
    # A one-node cluster: JetStream would want peers, and the zone needs none.
    async with EmbeddedNats(config_file=conf, jetstream=False) as server:
        async with ServiceRunner(Echo, nats=server.url) as runner:
            assert runner.announcement().zone == "east"
            assert runner.info().metadata["natsmesh.zone"] == "east"
        async with ServiceRunner(Echo, nats=server.url, zone="eu-west-1a") as runner:
            assert runner.announcement().zone == "eu-west-1a"


async def test_heartbeats_until_the_leave_and_none_after(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def on_control(msg: Any) -> None:
        seen.append((msg.subject.split(".")[2], json.loads(msg.data)))

    try:
        await nc.subscribe("mesh._ctl.*.echo", cb=on_control)
        await flush(nc)
        async with ServiceRunner(Echo, nats=nats_url, heartbeat=0.05) as runner:
            await eventually(lambda: sum(kind == "heartbeat" for kind, _ in seen) >= 3)
        # The leave is the last word: a heartbeat after it would bring the instance back.
        await flush(nc)
        kinds = [kind for kind, _ in seen]
        assert kinds[0] == "announce"
        assert kinds[-1] == "leave"
        assert kinds.count("leave") == 1
        assert {body["id"] for _, body in seen} == {runner.id}
    finally:
        await nc.close()


async def test_srv_answers_whatever_the_request_carries(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        async with ServiceRunner(Echo, nats=nats_url) as runner:
            for data, headers in (
                (b"\xc1\x00garbage", None),
                (b"x" * 500_000, {"Content-Type": "application/json"}),
                (b"", {"Mesh-Budget": "-1", "Mesh-Attempt": "NaN", "traceparent": "zz"}),
            ):
                for verb in ("PING", "INFO", "STATS"):
                    reply = await nc.request(
                        f"$SRV.{verb}.echo.{runner.id}", data, timeout=5, headers=headers
                    )
                    assert json.loads(reply.data)["id"] == runner.id
            # Published without a reply subject: nothing to answer, nothing breaks.
            await nc.publish("$SRV.PING.echo", b"no reply wanted")
            reply = await nc.request("$SRV.PING.echo", b"", timeout=5)
            assert json.loads(reply.data)["id"] == runner.id
    finally:
        await nc.close()
