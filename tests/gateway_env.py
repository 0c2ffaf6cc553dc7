"""What the gateway's tests share: routes, small services, a raw ASGI caller, a subject recorder."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import nats
from nats.aio.msg import Msg
from waits import leading

from examples.shop import SERVICES
from gateway import Gateway, GatewayLimits, bind, create_app, run_server
from natsmesh import Context, Mesh, ServiceRunner, endpoint, service
from natsmesh.control._controller import Controller
from natsmesh.transport._flush import flush

ROOT = Path(__file__).parent.parent
FORWARD = ("x-request-id", "x-canary", "x-instance")

#: The shop's routes and a few for the tests.
TEST_ROUTES = (
    (ROOT / "examples" / "routes.toml").read_text()
    + """
[[http]]
method = "GET"
path = "/slow"
target = "echo.slow"
timeout = 0.3

[[http]]
method = "GET"
path = "/headers"
target = "hdrs.show"

[[http]]
method = "GET"
path = "/ghost/{id}"
target = "ghost.get"

[[http]]
method = "PUT"
path = "/items/{id}"
target = "echo.echo"
"""
)


@service("hdrs", version="1.0.0", description="shows what a service receives")
class Headers:
    @endpoint
    async def show(self, ctx: Context) -> dict[str, Any]:
        return {"headers": dict(ctx.headers), "trace": ctx.trace.trace_id, "left": ctx.remaining}


@service("busy", version="1.0.0", description="holds requests", max_concurrency=1)
class Busy:
    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    @endpoint
    async def hold(self) -> dict[str, bool]:
        self.entered.set()
        await self.release.wait()
        return {"held": True}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes | Sequence[bytes] = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    query: bytes = b"",
) -> Answer:
    """One request straight into the ASGI app, the path exactly as given (as uvicorn decodes it)."""
    chunks = [body] if isinstance(body, bytes) else list(body)
    received: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not chunks:
            return {"type": "http.disconnect"}
        chunk = chunks.pop(0)
        received.append({"type": "http.request", "body": chunk, "more_body": bool(chunks)})
        return received[-1]

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "headers": list(headers),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    answer = Answer(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content)
    answer.received = len(received)  # type: ignore[attr-defined]
    return answer


@dataclass
class Recorder:
    """Every message on ``mesh.>`` but the control plane's: what requests reached NATS."""

    subjects: list[str] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        if not msg.subject.startswith("mesh._ctl."):
            self.subjects.append(msg.subject)


@asynccontextmanager
async def recording(url: str) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    nc = await nats.connect(url)
    try:
        await nc.subscribe("mesh.>", cb=recorder.on_msg)
        await flush(nc)
        yield recorder
        await flush(nc)
    finally:
        await nc.close()


async def apply_routes(controller: Controller, text: str = TEST_ROUTES) -> None:
    await leading(controller)
    reply = await controller.apply(text.encode(), allow_empty=True)
    assert reply.ok, reply


@dataclass
class Shop:
    url: str
    mesh: Mesh
    app: Gateway
    busy: Busy
    controller: Controller


@asynccontextmanager
async def running_shop(
    url: str, *, limits: GatewayLimits | None = None, routes: str = TEST_ROUTES
) -> AsyncIterator[Shop]:
    """The shop, the test services, a controller with routes applied, and a started gateway."""
    from services import Echo

    busy = Busy()
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(Controller(url))
        await apply_routes(controller, routes)
        for target in [*SERVICES, Echo, Headers, busy]:
            await stack.enter_async_context(ServiceRunner(target, nats=url))
        mesh = await stack.enter_async_context(Mesh(url, name="gateway-test", kind="gateway"))
        app = create_app(mesh, limits=limits, forward_headers=FORWARD)
        await app.start()
        stack.push_async_callback(app.stop)
        await app.directory.scan()
        # A scan stops listening 0.15 s after the last answer: on a busy machine it can
        # miss one. Asking each by name cannot.
        for target in ("catalog.get", "pricing.quote", "orders.place", "echo.echo", "busy.hold"):
            assert await app.directory.find(*target.split(".")), target
        yield Shop(url, mesh, app, busy, controller)


@dataclass
class Lifespan:
    """An app's running ASGI lifespan task (see :func:`in_lifespan`)."""

    to_app: anyio.abc.ObjectSendStream[dict[str, Any]]
    from_app: anyio.abc.ObjectReceiveStream[dict[str, Any]]
    scope: anyio.CancelScope

    async def shutdown(self) -> None:
        await self.to_app.send({"type": "lifespan.shutdown"})
        assert (await self.from_app.receive())["type"] == "lifespan.shutdown.complete"

    def cancel(self) -> None:
        """End the task as a server that sends no shutdown message does."""
        self.scope.cancel()


@asynccontextmanager
async def in_lifespan(app: Any) -> AsyncIterator[Lifespan]:
    """The app's lifespan task, started (startup complete); the body shuts it down or
    cancels it, and the block ends with the task.
    """
    to_app, from_test = anyio.create_memory_object_stream[dict[str, Any]](4)
    to_test, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with anyio.create_task_group() as tg, to_app, from_test, to_test, from_app:
        tg.start_soon(app, {"type": "lifespan"}, from_test.receive, to_test.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        yield Lifespan(to_app, from_app, tg.cancel_scope)


@asynccontextmanager
async def serving(
    app: Any,
    *,
    limits: GatewayLimits,
    http: str = "auto",
    sock: socket.socket | None = None,
) -> AsyncIterator[str]:
    """``app`` served by the gateway's uvicorn on ``sock`` (a fresh loopback port by
    default) for the block; yields its URL."""
    listener = bind("127.0.0.1", 0) if sock is None else sock
    async with anyio.create_task_group() as tg:
        url = await tg.start(
            lambda task_status: run_server(
                app, listener, limits=limits, http=http, task_status=task_status
            )
        )
        yield url
        tg.cancel_scope.cancel()
