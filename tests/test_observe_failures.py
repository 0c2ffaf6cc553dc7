"""Failed requests reach the dashboard with their cause chain, only while observed, bounded.

Real nats-server, real services in-process, the real observer; the hostile inputs
are published on the failures subject by a plain nats-py client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import nats
import pytest
from services import Back, Front

from natsmesh import Mesh, RemoteError, ServiceRunner
from natsmesh.dashboard import _views
from natsmesh.dashboard._observer import FAILING_SERVICES_KEPT, FAILURES_KEPT, Observer
from natsmesh.observe._report import FAILURES_PER_ENDPOINT
from natsmesh.transport._flush import flush
from natsmesh.wire import _observe
from natsmesh.wire._errors import MAX_CAUSE_MESSAGE, MAX_CAUSES, Cause

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _observing(nats_url: str) -> AsyncIterator[tuple[Mesh, Observer]]:
    async with Mesh(nats_url, name="shopper") as mesh, anyio.create_task_group() as tg:
        observer = Observer(mesh, every=0.2)
        await tg.start(observer.run)
        yield mesh, observer
        tg.cancel_scope.cancel()


async def _until(observer: Observer, service: str, n: int) -> list[dict[str, Any]]:
    with anyio.fail_after(10):
        while len(observer.failures.of(service)) < n:
            await observer.updated.wait()
    return observer.failures.of(service)


async def test_a_failed_request_reaches_the_service_page_with_its_causes(nats_url: str) -> None:
    async with (
        ServiceRunner(Back, nats=nats_url),
        ServiceRunner(Front, nats=nats_url),
        _observing(nats_url) as (mesh, observer),
    ):
        with pytest.raises(RemoteError) as raised:
            await mesh.call("front.go")
        [front] = await _until(observer, "front", 1)
        assert (front["endpoint"], front["code"], front["kind"]) == ("go", 502, "upstream")
        assert front["message"] == "call to back.fail failed"
        assert front["trace_id"] == raised.value.trace_id
        [cause] = front["causes"]
        assert (cause["service"], cause["endpoint"], cause["code"]) == ("back", "fail", 503)
        # Bounded and on one printable line; the markup is only text (the page's job).
        assert len(cause["message"]) <= MAX_CAUSE_MESSAGE
        assert cause["message"].startswith("<img src=x onerror=alert(1)><script>")
        assert "\n" not in cause["message"]
        assert "\x1b" not in cause["message"]
        [back] = await _until(observer, "back", 1)
        assert back["code"] == 503
        assert len(back["message"]) <= MAX_CAUSE_MESSAGE

        page = _views.service(
            "front",
            observer.aggregate,
            observer.instances,
            anyio.current_time(),
            route=None,
            registry=None,
            status=None,
            failures=observer.failures.of("front"),
        )
        assert page is not None
        assert page["errors"][0]["causes"][0]["service"] == "back"
        assert page["last_errors"][0]["error"] == "502: call to back.fail failed"


async def test_failures_are_published_only_on_interest_and_bounded(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    sub = await nc.subscribe(_observe.errors_wildcard("mesh"))
    await flush(nc)  # registered before anything it must see (or must not)
    try:
        async with ServiceRunner(Back, nats=nats_url), Mesh(nats_url, name="probe") as mesh:
            many = FAILURES_PER_ENDPOINT + 5
            for _ in range(many):
                with pytest.raises(RemoteError):
                    await mesh.call("back.fail")
            # Ordered flushes: every PUB the mesh made before reached the server, and
            # anything delivered to nc came before its PONG.
            await flush(mesh.nats)
            await flush(nc)
            assert sub.pending_msgs == 0  # nobody asked: nothing was published

            await nc.publish(_observe.metrics_interest("mesh"), b"")
            with anyio.fail_after(5):
                msg = await sub.next_msg(timeout=5)
            assert _observe.errors_sender(msg.subject, "mesh")[0] == "back"
            batch = _observe.parse_failures(msg.data)
            # The last few of the endpoint, oldest first; a ring, not a log.
            assert [f.seq for f in batch] == list(range(many - FAILURES_PER_ENDPOINT + 1, many + 1))
    finally:
        await nc.close()


def _failure(seq: int, message: str = "boom", causes: list[Any] | None = None) -> list[Any]:
    return [seq, 1.0, "fail", 500, "internal", message, "", causes or []]


JUNK = [
    b"",
    b"\xc1",
    b"\x80" * 100_000,
    b"x" * (_observe.MAX_ERROR_MESSAGE + 1),
    msgpack.packb({"v": 2, "x": []}),
    msgpack.packb({"v": 1, "x": "no"}),
    msgpack.packb({"v": 1, "x": [_failure(1)] * (_observe.MAX_ERROR_BATCH + 1)}),
    msgpack.packb({"v": 1, "x": [[1, 2, 3]]}),
    msgpack.packb({"v": 1, "x": [[-1, 1.0, "fail", 500, "internal", "m", "", []]]}),
    msgpack.packb({"v": 1, "x": [[1, float("nan"), "fail", 500, "internal", "m", "", []]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "a.b", 500, "internal", "m", "", []]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "fail", 99, "internal", "m", "", []]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "fail", 500, "<b>", "m", "", []]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "fail", 500, "internal", "m", "<script>", []]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "fail", 500, "internal", "m" * 5000, "", []]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "fail", 500, "internal", "m", "", {"a": 1}]]}),
    msgpack.packb({"v": 1, "x": [[1, 1.0, "fail", True, "internal", "m", "", []]]}),
]


@pytest.mark.parametrize("body", JUNK, ids=range(len(JUNK)))
def test_malformed_failures_are_rejected(body: bytes) -> None:
    with pytest.raises(_observe.Rejected):
        _observe.parse_failures(body)


def test_causes_are_checked_and_bounded_as_error_replies_bound_them() -> None:
    good = {"service": "s", "endpoint": "e", "kind": "internal", "code": 500, "message": "m"}
    causes: list[Any] = [good] * 12 + [{"service": "<script>", **good}, "junk", 7]
    causes[5] = {**good, "service": "a.b"}
    body = msgpack.packb({"v": 1, "x": [_failure(1, "m\x00\n<i>", causes)]})
    [failure] = _observe.parse_failures(body)
    assert failure.message == "m  <i>"
    assert len(failure.causes) == MAX_CAUSES
    assert all(isinstance(c, Cause) for c in failure.causes)
    round_trip = _observe.parse_failures(_observe.failures([failure]))
    assert round_trip == [failure]


@pytest.mark.parametrize(
    "subject",
    [
        "mesh._ctl.observe.errors.a",
        "mesh._ctl.observe.errors." + "a" * 200 + ".x",
        "mesh._ctl.observe.samples.a.b",
        "other._ctl.observe.errors.a.b",
    ],
)
def test_a_failures_subject_names_a_service_and_an_instance(subject: str) -> None:
    with pytest.raises(_observe.Rejected):
        _observe.errors_sender(subject, "mesh")


async def test_garbage_and_floods_of_failures_are_dropped_or_bounded(nats_url: str) -> None:
    async with _observing(nats_url) as (_mesh, observer):
        nc = await nats.connect(nats_url)
        try:
            for body in JUNK:
                await nc.publish(_observe.errors_subject("mesh", "evil", "x"), body)
            await nc.publish("mesh._ctl.observe.errors.<b>.x", _observe.failures([]))
            await nc.flush()
            with anyio.fail_after(10):
                while observer.rejected < len(JUNK) + 1:
                    await observer.updated.wait()
            assert observer.failures.of("evil") == []

            # A flood from many instances and services: the observer keeps a bounded few.
            def batch(start: int) -> bytes:
                return _observe.failures(
                    [
                        _observe.Failure(s, 1.0 + s, "fail", 500, "internal", "m", "", ())
                        for s in range(start, start + _observe.MAX_ERROR_BATCH)
                    ]
                )

            for i in range(10):
                await nc.publish(_observe.errors_subject("mesh", "noisy", f"i{i}"), batch(i))
            await nc.publish(_observe.errors_subject("mesh", "noisy", "i0"), batch(0))
            for i in range(FAILING_SERVICES_KEPT + 10):
                await nc.publish(_observe.errors_subject("mesh", f"svc{i}", "x"), batch(0))
            await nc.flush()
            with anyio.fail_after(10):
                while not observer.failures.of(f"svc{FAILING_SERVICES_KEPT + 9}"):
                    await observer.updated.wait()
            assert observer.failures.of("noisy") == []  # least recently failed: gone first
            kept = observer.failures.of(f"svc{FAILING_SERVICES_KEPT}")
            assert len(kept) == _observe.MAX_ERROR_BATCH
            assert observer.failures.of("svc0") == []
            assert len(observer.failures._by_service) == FAILING_SERVICES_KEPT
        finally:
            await nc.close()


def test_an_observer_keeps_a_few_per_service_without_repeats() -> None:
    from natsmesh.dashboard._observer import RecentFailures

    kept = RecentFailures()
    failures = [
        _observe.Failure(s, float(s), "fail", 500, "internal", "m", "", ()) for s in range(1, 80)
    ]
    kept.add("svc", "a", failures[:16])
    kept.add("svc", "a", failures[:16])  # sent again to an observer back after a silence
    assert len(kept.of("svc")) == 16
    for start in range(16, 79, 16):
        kept.add("svc", "a", failures[start : start + 16])
    newest = kept.of("svc")
    assert len(newest) == FAILURES_KEPT
    assert newest[0]["at"] == 79.0
