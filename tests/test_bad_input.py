"""Hostile and broken requests against a real nats-server and a real ServiceRunner.

Raw requests go through nats-py, so that the service sees exactly the bytes and
headers under test; the same failures are then checked through ``Mesh``, which
must turn them into the documented exceptions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import nats
import nats.errors
import pydantic
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsmesh import (
    InvalidName,
    InvalidRequest,
    Mesh,
    MeshError,
    NoResponders,
    RemoteError,
    ServiceError,
    ServiceRunner,
    UnknownEndpoint,
    endpoint,
    service,
)
from natsmesh.transport._flush import flush

pytestmark = pytest.mark.anyio

MARKER = "MARKER-5b1e9c-do-not-echo"
ORDER = "mesh.shop.order"
MIB = 1024 * 1024


class Order(pydantic.BaseModel):
    item: str
    qty: int


class Receipt(pydantic.BaseModel):
    item: str
    total: int


@service("shop", version="1.0.0")
class Shop:
    @endpoint
    async def order(self, order: Order) -> Receipt:
        return Receipt(item=order.item, total=order.qty * 3)

    @endpoint
    async def crash(self) -> None:
        raise ValueError("secret-internals")

    @endpoint
    async def teapot(self) -> None:
        raise ServiceError(418, "teapot")


@service("gate", version="1.0.0", max_concurrency=2)
class Gate:
    def __init__(self) -> None:
        self.release = anyio.Event()

    @endpoint
    async def wait(self) -> str:
        await self.release.wait()
        return "done"


@asynccontextmanager
async def serving(url: str, target: object) -> AsyncIterator[tuple[ServiceRunner, NATS]]:
    """A running instance of ``target`` and a plain nats-py connection to poke it with."""
    async with ServiceRunner(target, nats=url) as runner:
        nc = await nats.connect(url)
        try:
            yield runner, nc
        finally:
            await nc.close()


def error_of(reply: Msg) -> tuple[int, str]:
    headers = reply.headers or {}
    return int(headers["Nats-Service-Error-Code"]), headers["Mesh-Error-Kind"]


def body_of(reply: Msg) -> Any:
    headers = reply.headers or {}
    if headers.get("Content-Type") == "application/json":
        return json.loads(reply.data)
    return msgpack.unpackb(reply.data)


def reply_text(reply: Msg) -> str:
    """Everything the caller can read from a reply, headers included."""
    headers: Mapping[str, str] = reply.headers or {}
    return reply.data.decode("latin-1") + "".join(f"{k}: {v}\n" for k, v in headers.items())


async def assert_serving(nc: NATS) -> None:
    reply = await nc.request(ORDER, msgpack.packb({"item": "tea", "qty": 2}), timeout=2)
    assert reply.headers is None or "Nats-Service-Error-Code" not in reply.headers
    assert msgpack.unpackb(reply.data) == {"item": "tea", "total": 6}


async def endpoint_stats(nc: NATS, service_name: str, name: str) -> dict[str, Any]:
    reply = await nc.request(f"$SRV.STATS.{service_name}", b"", timeout=2)
    stats = json.loads(reply.data)
    (found,) = [e for e in stats["endpoints"] if e["name"] == name]
    return dict(found)


# -- raw requests ------------------------------------------------------------------------


async def test_malformed_msgpack_is_400(nats_url: str) -> None:
    async with serving(nats_url, Shop()) as (_, nc):
        reply = await nc.request(ORDER, b"\xc1\x00", timeout=2)
        assert error_of(reply) == (400, "malformed")
        assert body_of(reply)["error"]["code"] == 400
        await assert_serving(nc)


async def test_malformed_json_is_400_with_a_json_body(nats_url: str) -> None:
    async with serving(nats_url, Shop()) as (_, nc):
        reply = await nc.request(
            ORDER, b'{"item": "tea", ', headers={"Content-Type": "application/json"}, timeout=2
        )
        assert error_of(reply) == (400, "malformed")
        assert reply.headers is not None
        assert reply.headers["Content-Type"] == "application/json"
        body = json.loads(reply.data)
        assert body["error"]["code"] == 400
        assert body["error"]["kind"] == "malformed"
        await assert_serving(nc)


@pytest.mark.parametrize("content_type", [None, "application/json"])
async def test_validation_failure_is_422_with_paths_and_no_echo(
    nats_url: str, content_type: str | None
) -> None:
    payload = {"item": ["not", "a", "string"], "qty": MARKER}
    if content_type is None:
        data, headers = msgpack.packb(payload), None
    else:
        data, headers = json.dumps(payload).encode(), {"Content-Type": content_type}
    async with serving(nats_url, Shop()) as (_, nc):
        reply = await nc.request(ORDER, data, headers=headers, timeout=2)
        assert error_of(reply) == (422, "validation")
        details = body_of(reply)["error"]["details"]
        assert sorted(tuple(d["loc"]) for d in details) == [("item",), ("qty",)]
        assert all(d["msg"] and d["type"] for d in details)
        assert MARKER not in reply_text(reply)
        assert "not" not in json.dumps(details)
        await assert_serving(nc)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("data", "headers", "expected"),
    [
        (b"\x80" * MIB, None, {(400, "malformed"), (413, "too_large")}),
        (b"\xdd" + struct.pack(">I", 1_000_000) + b"\x80" * 64, None, {(413, "too_large")}),
        (b"\x91" * 500 + b"\x90", None, {(413, "too_large")}),
        (b"\x91" * 100_000 + b"\x90", None, {(413, "too_large")}),
        (b"[" * 500 + b"]" * 500, {"Content-Type": "application/json"}, {(413, "too_large")}),
        (
            b"[" * 100_000,
            {"Content-Type": "application/json"},
            {(400, "malformed"), (413, "too_large")},
        ),
        (b"{}", {"Content-Type": "text/plain"}, {(415, "unsupported_media_type")}),
        (b"", {"Content-Type": "application/xml"}, {(415, "unsupported_media_type")}),
    ],
    ids=[
        "mib-of-0x80",
        "array32-bomb",
        "deep-msgpack",
        "very-deep-msgpack",
        "deep-json",
        "bracket-bomb-json",
        "text-plain",
        "xml",
    ],
)
async def test_hostile_payloads_are_refused_quickly(
    nats_url: str, data: bytes, headers: dict[str, str] | None, expected: set[tuple[int, str]]
) -> None:
    async with serving(nats_url, Shop()) as (_, nc):
        with anyio.fail_after(2):
            reply = await nc.request(ORDER, data, headers=headers, timeout=2)
        assert error_of(reply) in expected
        assert body_of(reply)["error"]["code"] == error_of(reply)[0]
        await assert_serving(nc)


@pytest.mark.parametrize("budget", ["0", "-5"])
async def test_a_spent_budget_gets_no_reply_and_is_counted(nats_url: str, budget: str) -> None:
    good = msgpack.packb({"item": "tea", "qty": 1})
    async with serving(nats_url, Shop()) as (_, nc):
        before = await endpoint_stats(nc, "shop", "order")
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request(ORDER, good, headers={"Mesh-Budget-Ms": budget}, timeout=0.25)
        # A later request on the same subscription is handled after the dropped one.
        await assert_serving(nc)
        after = await endpoint_stats(nc, "shop", "order")
        assert after["data"]["dropped_expired"] == before["data"]["dropped_expired"] + 1


async def test_a_crashing_handler_is_500_without_internals(nats_url: str) -> None:
    async with serving(nats_url, Shop()) as (_, nc):
        reply = await nc.request("mesh.shop.crash", b"", timeout=2)
        assert error_of(reply) == (500, "internal")
        assert "secret-internals" not in reply_text(reply)
        assert "ValueError" not in reply_text(reply)
        stats = await endpoint_stats(nc, "shop", "crash")
        assert "secret-internals" not in json.dumps(stats)
        await assert_serving(nc)


async def test_a_service_error_keeps_its_code_and_message(nats_url: str) -> None:
    async with serving(nats_url, Shop()) as (_, nc):
        reply = await nc.request("mesh.shop.teapot", b"", timeout=2)
        assert error_of(reply) == (418, "service")
        assert reply.headers is not None
        assert reply.headers["Nats-Service-Error"] == "teapot"
        assert body_of(reply)["error"] == {"code": 418, "kind": "service", "message": "teapot"}
        await assert_serving(nc)


async def test_the_instance_keeps_serving_after_a_barrage(nats_url: str) -> None:
    json_ct = {"Content-Type": "application/json"}
    barrage: list[tuple[str, bytes, dict[str, str] | None]] = [
        (ORDER, b"\xc1", None),
        (ORDER, b"{", json_ct),
        (ORDER, msgpack.packb({"qty": MARKER}), None),
        (ORDER, b"\x80" * MIB, None),
        (ORDER, b"\x91" * 1000 + b"\x90", None),
        (ORDER, b"[" * 100_000, json_ct),
        (ORDER, b"1" * 5000, json_ct),
        (ORDER, b"{}", {"Content-Type": "text/plain"}),
        (ORDER, b"\xc7\x00\x05", None),
        (ORDER, b"\xa2\xff\xfe", None),
        ("mesh.shop.crash", b"", None),
        ("mesh.shop.teapot", b"", None),
    ]
    async with serving(nats_url, Shop()) as (_, nc):
        codes: list[int] = []

        async def send(subject: str, data: bytes, headers: dict[str, str] | None) -> None:
            reply = await nc.request(subject, data, headers=headers, timeout=5)
            codes.append(error_of(reply)[0])

        async with anyio.create_task_group() as tg:
            for subject, data, headers in barrage:
                tg.start_soon(send, subject, data, headers)
        assert len(codes) == len(barrage)
        assert all(400 <= code < 600 for code in codes)
        await assert_serving(nc)


# -- overload ----------------------------------------------------------------------------


async def test_overload_sheds_with_503_and_admits_the_rest(nats_url: str) -> None:
    gate = Gate()
    send, receive = anyio.create_memory_object_stream[Msg](5)
    with send, receive:
        async with serving(nats_url, gate) as (runner, nc):

            async def one() -> None:
                await send.send(await nc.request("mesh.gate.wait", b"", timeout=5))

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(one)
                # The three over the limit are answered while the first two still wait.
                with anyio.fail_after(2):
                    shed = [await receive.receive() for _ in range(3)]
                assert [error_of(r) for r in shed] == [(503, "overloaded")] * 3
                gate.release.set()
                done = [await receive.receive() for _ in range(2)]
            assert [msgpack.unpackb(r.data) for r in done] == ["done", "done"]
            assert all(r.headers is None for r in done)
            (stats,) = runner.stats().endpoints
            assert stats.data is not None
            assert stats.data["shed_overloaded"] == 3


# -- through Mesh --------------------------------------------------------------------------


async def test_mesh_raises_invalid_request(nats_url: str) -> None:
    async with serving(nats_url, Shop()), Mesh(nats_url, timeout=2) as mesh:
        with pytest.raises(InvalidRequest) as malformed:
            await mesh.call("shop.order", b"\xc1")
        assert (malformed.value.code, malformed.value.kind) == (400, "malformed")
        assert malformed.value.service == "shop"
        assert malformed.value.endpoint == "order"

        with pytest.raises(InvalidRequest) as deep:
            await mesh.call("shop.order", b"\x91" * 200 + b"\x90")
        assert (deep.value.code, deep.value.kind) == (413, "too_large")

        with pytest.raises(InvalidRequest) as invalid:
            await mesh.call("shop.order", {"item": "tea", "qty": MARKER})
        assert (invalid.value.code, invalid.value.kind) == (422, "validation")
        assert [d["loc"] for d in invalid.value.details] == [["qty"]]
        assert MARKER not in str(invalid.value)
        assert MARKER not in repr(invalid.value.details)

        receipt = await mesh.call("shop.order", Order(item="tea", qty=2), response=Receipt)
        assert receipt == Receipt(item="tea", total=6)


async def test_mesh_raises_remote_errors_for_handler_failures(nats_url: str) -> None:
    async with serving(nats_url, Shop()), Mesh(nats_url, timeout=2) as mesh:
        with pytest.raises(RemoteError) as crash:
            await mesh.call("shop.crash")
        assert not isinstance(crash.value, InvalidRequest)
        assert crash.value.code == 500
        assert "secret-internals" not in str(crash.value)

        with pytest.raises(RemoteError) as teapot:
            await mesh.call("shop.teapot")
        assert (teapot.value.code, teapot.value.message) == (418, "teapot")


async def test_mesh_raises_unknown_endpoint(nats_url: str) -> None:
    async with serving(nats_url, Shop()), Mesh(nats_url, timeout=2) as mesh:
        with pytest.raises(UnknownEndpoint) as info:
            await mesh.call("shop.refund", {"item": "tea"})
        assert info.value.code == 404
        assert (info.value.service, info.value.endpoint) == ("shop", "refund")


async def test_mesh_no_responders_is_fast(nats_url: str) -> None:
    async with Mesh(nats_url, timeout=5) as mesh:
        with anyio.fail_after(0.5), pytest.raises(NoResponders) as info:
            await mesh.call("nobody.ping", {"x": 1})
        assert info.value.service == "nobody"
        assert info.value.subject == "mesh.nobody.ping"


@pytest.mark.parametrize("target", ["*.order", ">.order", "a b.order", " shop.order", "shop"])
async def test_mesh_rejects_bad_service_names(nats_url: str, target: str) -> None:
    async with serving(nats_url, Shop()), Mesh(nats_url, timeout=2) as mesh:
        with anyio.fail_after(0.5), pytest.raises(InvalidName):
            await mesh.call(target, {})


@pytest.mark.parametrize(
    "target", ["shop.*", "shop.>", "shop.a b", "shop.b.c", "a.b.c", "shop.order.*", "shop.\t"]
)
async def test_mesh_bad_endpoint_names_are_unknown_or_no_responders(
    nats_url: str, target: str
) -> None:
    async with serving(nats_url, Shop()), Mesh(nats_url, timeout=2) as mesh:
        with anyio.fail_after(1), pytest.raises((InvalidName, UnknownEndpoint, NoResponders)):
            await mesh.call(target, {})


async def test_bad_targets_are_never_delivered_to_anyone(nats_url: str) -> None:
    targets = [
        "shop.*",
        "shop.>",
        "shop.*.order",
        "*.order",
        ">.order",
        "shop.a b",
        "shop.order.*",
        "shop.order.>",
        "a.b.c",
        "*.*",
    ]
    async with (
        serving(nats_url, Shop()) as (runner, tap_nc),
        Mesh(nats_url, timeout=0.3) as mesh,
    ):
        # A tap on the whole prefix: every subject a bad target could reach. (It also turns
        # "no responders" into timeouts, hence the short timeout.)
        tap = await tap_nc.subscribe("mesh.>")
        await flush(tap_nc)
        for target in targets:
            with pytest.raises((MeshError, nats.errors.Error)):
                await mesh.call(target, {"item": "tea", "qty": 1})
        # Messages from one connection reach a subscriber in order: if the sentinel comes
        # first, nothing a bad target sent arrived before it.
        await mesh.nats.publish("mesh.sentinel", b"")
        first = await tap.next_msg(timeout=2)
        while first.subject.startswith("mesh._ctl."):  # the service's heartbeats, on a slow day
            first = await tap.next_msg(timeout=2)
        assert first.subject == "mesh.sentinel"
        assert all(e.num_requests == 0 for e in runner.stats().endpoints)
