"""The dashboard's HTTP side: a plain ASGI app over an :class:`Observer`.

==================================  =========================================================
``GET /``, ``/static/<file>``       the page (assets shipped in the package; no CDN)
``GET /metrics``                    the whole mesh in Prometheus's text format
``GET /api/v1/topology``            nodes and edges with rates, success and p99
``GET /api/v1/services``            services with instances and traffic
``GET /api/v1/services/<name>``     one service's page (404 if unknown)
``GET /api/v1/events``              server-sent events: topology and services per beat
``GET /api/v1/tap/<name>``          server-sent events: the service's request samples
``GET /healthz``                    200 while serving
==================================  =========================================================

Only GET and HEAD; every response says ``no-store``, forbids framing and sniffing and
carries a Content-Security-Policy that allows nothing beyond this origin. A request
whose ``Host`` is not one this server answers to is refused (DNS rebinding). With an
``authorize`` callable every route but ``/healthz`` needs its approval.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from importlib import resources
from typing import Any, Final

import anyio

from natsmesh.dashboard import _prom, _views
from natsmesh.dashboard._observer import Observer
from natsmesh.wire._errors import InvalidName
from natsmesh.wire._subjects import validate_name

log = logging.getLogger("natsmesh.dashboard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: Decides on a request's headers: None to let it through, else (status, extra headers).
Headers = list[tuple[bytes, bytes]]
Authorize = Callable[[str, str, Headers], tuple[int, Headers] | None]

_STATIC: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_SECURITY: Final = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        b" connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
]
MAX_PATH: Final = 512
MAX_TAP_SECONDS: Final = 3600.0  # a tap stream ends after an hour; the page reconnects


class Dashboard:
    """The ASGI application (``ui=False``: only ``/metrics``, the API and ``/healthz``)."""

    def __init__(
        self,
        observer: Observer,
        *,
        hosts: Iterable[str] | None = None,
        authorize: Authorize | None = None,
        ui: bool = True,
    ) -> None:
        self.observer = observer
        self._hosts = None if hosts is None else frozenset(h.lower() for h in hosts)
        self._authorize = authorize
        self._ui = ui
        self._registry = _prom.registry_for(observer)
        self._static = {name: _read(name) for name in _STATIC} if ui else {}
        self.closing = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.closing)
            return
        if scope["type"] != "http":
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "")
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        if len(path) > MAX_PATH:
            await _plain(send, 414, b"path too long\n")
            return
        if not self._host_ok(headers):
            await _plain(send, 421, b"unknown host\n")
            return
        if path == "/healthz":
            await _plain(send, 200, b"ok\n")
            return
        if self._authorize is not None:
            denied = self._authorize(method, path, headers)
            if denied is not None:
                await _plain(send, denied[0], b"unauthorized\n", denied[1])
                return
        await self._route(path, receive, send, head=method == "HEAD")

    def _host_ok(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self._hosts is None:
            return True
        hosts = [v for k, v in headers if k == b"host"]
        if len(hosts) != 1:
            return False
        host = hosts[0].decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in self._hosts or name.strip("[]") in self._hosts

    async def _route(self, path: str, receive: Receive, send: Send, *, head: bool) -> None:
        now = time.monotonic()
        observer = self.observer
        if path == "/metrics":
            body = _prom.exposition(self._registry)
            await _reply(send, 200, b"text/plain; version=0.0.4; charset=utf-8", body, head)
        elif path == "/api/v1/topology":
            await _json(send, _views.topology(observer.aggregate, observer.instances, now), head)
        elif path == "/api/v1/services":
            await _json(send, _views.services(observer.aggregate, observer.instances, now), head)
        elif path.startswith("/api/v1/services/"):
            await self._service(path.removeprefix("/api/v1/services/"), send, head)
        elif path == "/api/v1/events":
            await _streaming(receive, send, self._events(send))
        elif path.startswith("/api/v1/tap/"):
            await _streaming(receive, send, self._tap(path.removeprefix("/api/v1/tap/"), send))
        elif self._ui and (path == "/" or path.startswith("/static/")):
            name = "index.html" if path == "/" else path.removeprefix("/static/")
            if name not in self._static:
                await _plain(send, 404, b"not found\n")
                return
            await _reply(send, 200, _STATIC[name].encode(), self._static[name], head)
        else:
            await _plain(send, 404, b"not found\n")

    async def _service(self, name: str, send: Send, head: bool) -> None:
        try:
            validate_name("service", name)
        except InvalidName:
            await _plain(send, 404, b"no such service\n")
            return
        observer = self.observer
        tables = observer.mesh._tables
        page = _views.service(
            name,
            observer.aggregate,
            observer.instances,
            time.monotonic(),
            route=tables.route(name) if tables is not None else None,
            registry=tables.registry(name) if tables is not None else None,
            status=await observer.status(),
            failures=observer.failures.of(name),
        )
        if page is None:
            await _plain(send, 404, b"no such service\n")
            return
        await _json(send, page, head)

    async def _events(self, send: Send) -> None:
        await _start_stream(send)
        observer = self.observer
        with anyio.move_on_after(MAX_TAP_SECONDS):
            while not self.closing.is_set():
                now = time.monotonic()
                data = {
                    "topology": _views.topology(observer.aggregate, observer.instances, now),
                    "services": _views.services(observer.aggregate, observer.instances, now),
                    "observer": {"summaries": observer.summaries, "rejected": observer.rejected},
                }
                await _event(send, "update", data)
                await observer.updated.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _tap(self, name: str, send: Send) -> None:
        try:
            validate_name("service", name)
        except InvalidName:
            await _plain(send, 404, b"no such service\n")
            return
        await _start_stream(send)
        async with self.observer.tap(name) as samples:
            await _event(send, "open", {"service": name})
            with anyio.move_on_after(MAX_TAP_SECONDS):
                async for sample in samples:
                    if self.closing.is_set():
                        break
                    await _event(send, "sample", sample)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _streaming(receive: Receive, send: Send, stream: Awaitable[None]) -> None:
    """Run ``stream`` until it ends or the client goes away, whichever is first."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            await stream
        except OSError as exc:  # the client went away while an event was being written
            log.debug("dashboard: stream ended: %s", exc)
        tg.cancel_scope.cancel()


def _read(name: str) -> bytes:
    return resources.files("natsmesh.dashboard").joinpath("static", name).read_bytes()


async def _lifespan(receive: Receive, send: Send, closing: anyio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            closing.set()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _reply(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    head: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _reply(send, status, b"text/plain; charset=utf-8", body, extra=extra)


async def _json(send: Send, value: Any, head: bool) -> None:
    body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    await _reply(send, 200, b"application/json", body, head)


async def _start_stream(send: Send) -> None:
    headers = [(b"content-type", b"text/event-stream"), *_SECURITY]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _event(send: Send, kind: str, data: Any) -> None:
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # JSON escapes newlines inside strings, so one data line holds the whole event.
    frame = f"event: {kind}\ndata: {payload}\n\n".encode()
    await send({"type": "http.response.body", "body": frame, "more_body": True})
