"""One-shot commands: the route policy applies without a KV watch, and no log line is empty."""

from __future__ import annotations

import logging

import anyio
import nats
import pytest
from nats.aio.msg import Msg
from services import Echo
from test_cli import run
from waits import eventually, leading

from natsmesh import Mesh, RemoteError, ServiceRunner
from natsmesh.control._controller import Controller
from natsmesh.transport._flush import flush
from natsmesh.transport._transport import connect, describe

pytestmark = pytest.mark.anyio

# Every call to echo is refused by the caller itself: proof that its route was applied.
ROUTES = b"""
[services.echo.fault]
abort_code = 418
abort_percent = 100
"""


class ConsumerCreations:
    """Counts JetStream consumer creations requested by clients whose inboxes start with
    ``prefix`` (a KV watch is an ordered consumer; a KV get creates none)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0

    async def on_request(self, msg: Msg) -> None:
        if ".CREATE." in msg.subject and msg.reply.startswith(self.prefix):
            self.count += 1


async def test_a_cli_call_applies_the_route_without_watching_the_tables(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Controller(nats_url) as controller, ServiceRunner(Echo, nats=nats_url):
        await leading(controller, within=15)
        assert (await controller.apply(ROUTES)).ok
        observer = await nats.connect(nats_url)
        try:
            cli = ConsumerCreations("_INBOX_cli")
            watching = ConsumerCreations("_INBOX_watching")
            for counter in (cli, watching):
                await observer.subscribe("$JS.API.CONSUMER.>", cb=counter.on_request)
            await flush(observer)

            done = await run(
                "call", "echo.echo", '{"id": 1, "name": "a"}',
                "--nats", nats_url, "--inbox-prefix", "_INBOX_cli",
            )  # fmt: skip
            assert done.returncode == 5, done.stderr
            assert "418" in done.stderr  # the fault of echo's route: the policy applied
            assert cli.count == 0  # ...read by direct gets, with no consumer

            # A following client gets changes on the table subjects, with no consumer either.
            monkeypatch.setenv("NATS_INBOX_PREFIX", "_INBOX_watching")
            async with Mesh(nats_url, name="watching") as mesh:
                with pytest.raises(RemoteError, match="418"):
                    await mesh.call("echo.echo", {"id": 1, "name": "a"})
                assert (await controller.apply(b"[services.echo]\ntimeout = 4\n")).ok
                assert mesh._tables is not None
                await eventually(
                    lambda: mesh._tables is not None and mesh._tables.timeout("echo") == 4
                )
            assert watching.count == 0
        finally:
            await observer.close()


async def test_no_log_line_is_empty_for_an_exception_without_words(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # nats-py hands a subscription callback's exception to the error callback; some
    # exceptions (asyncio's TimeoutError, here) have no words at all.
    nc = await connect(nats_url, name="quiet-errors")
    try:
        raised = anyio.Event()

        async def handler(msg: Msg) -> None:
            raised.set()
            raise TimeoutError

        await nc.subscribe("boom", cb=handler)
        with caplog.at_level(logging.WARNING, logger="natsmesh"):
            await nc.publish("boom", b"")
            await raised.wait()
            await eventually(lambda: caplog.records)
    finally:
        await nc.close()
    (record,) = caplog.records
    assert record.getMessage() == "nats quiet-errors: TimeoutError"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (TimeoutError(), "TimeoutError"),
        (ValueError(""), "ValueError"),
        (ValueError("  \n "), "ValueError"),
        (OSError(111, "Connection refused"), "[Errno 111] Connection refused"),
        (RuntimeError("two\nlines"), "two lines"),
    ],
)
def test_describe_is_one_line_and_never_empty(exc: BaseException, text: str) -> None:
    assert describe(exc) == text


async def test_verbose_cli_output_has_no_empty_log_line(nats_url: str) -> None:
    async with Controller(nats_url), ServiceRunner(Echo, nats=nats_url):
        done = await run("-v", "call", "echo.echo", '{"id": 1, "name": "a"}', "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    for line in done.stderr.splitlines():
        assert not line.rstrip().endswith(":"), line  # "WARNING natsmesh: nats x: " and nothing
