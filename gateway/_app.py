"""The ASGI application: take a request within limits, call the mesh, answer JSON.

One request, in order: the gateway's own pages (``/healthz``, ``/readyz``,
``/metrics``, ``/openapi.json``, ``/docs``; with auth, the latter three behind
their access) → the concurrency cap (a fast 503) → one pass over the headers
(count and size, Content-Length, Content-Type, the budget, ``traceparent``, the
credentials, the forwarded allow-list; everything else, the mesh's own
``Mesh-*`` and ``Nats-*`` headers included, is dropped) → the path's segments
through the allow-list → the route → with auth, the route's access rule and
the credentials (:mod:`gateway._auth`: 401, 403; the verified identity becomes
the call's caller), before anything asks the mesh whether a default route's
service exists → the body, read within its size
limit (the time to receive a request is bounded below the app, by the server's
protocol: :mod:`gateway._protocol`) → JSON, merged with the path and query parameters → one
``Mesh.call`` (msgpack to natsmesh services) → the reply as JSON, or the error
mapped by :mod:`gateway._errors`.

The app is handed a :class:`natsmesh.Mesh`. With ``owns_mesh`` it enters and
leaves it in the ASGI lifespan; otherwise its owner does, and the app works
without a lifespan at all (as under httpx's ASGI transport).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from typing import Final

import pydantic_core

from gateway import _docs, _errors, _openapi
from gateway._auth import Denied, GatewayAuth, Policy, collect
from gateway._directory import Directory, EndpointDoc
from gateway._errors import GatewayError
from gateway._lifespan import lifespan
from gateway._limits import GatewayLimits
from gateway._metrics import CONTENT_TYPE as METRICS_TYPE
from gateway._metrics import Metrics
from gateway._paths import BadPath, Match, Router, WrongMethod
from gateway._request import (
    JSON,
    Disconnected,
    Head,
    Receive,
    Scope,
    Send,
    allow_list,
    check_head,
    payload_of,
    read_body,
)
from gateway._responses import json_headers, log_failure, send_error, send_page
from natsmesh import Context, HttpRoute, Mesh

log = logging.getLogger("natsmesh.gateway")


#: Seconds between two looks at the HTTP routes (a dictionary read, but on every request).
ROUTES_RECHECK: Final = 0.02
#: Paths answered when no HTTP route takes them: an index of the gateway's pages, and
#: the icon browsers ask every site for.
_FALLBACKS: Final = frozenset({"/", "/favicon.ico"})
#: Seconds NATS has to answer a PING for /readyz to say ready (nats-py takes whole seconds).
READY_PING: Final = 1
#: Client headers passed on to services unless told otherwise.
DEFAULT_FORWARD: Final = ("x-request-id", "x-canary")


class Gateway:
    """The ASGI callable. Build it with :func:`gateway.create_app`."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        limits: GatewayLimits,
        forward_headers: Iterable[str],
        default_route: bool,
        owns_mesh: bool,
        title: str,
        auth: GatewayAuth | None = None,
    ) -> None:
        self.mesh = mesh
        self.limits = limits
        self.auth = auth
        self.forward = allow_list(forward_headers, secret=auth.never_forward if auth else ())
        self._credentials = auth.header_names if auth else frozenset()
        self.owns_mesh = owns_mesh
        self.title = title
        self.directory = Directory(mesh)
        self.in_flight = 0
        self.metrics = Metrics(mesh.metrics, lambda: self.in_flight)
        self.router = Router(default_route=default_route)
        self._default_route = default_route
        self._body_limit: int | None = None
        self._routes_due = 0.0  # time.perf_counter() when to look at the HTTP routes again
        self._stack: AsyncExitStack | None = None  # what start() entered, stop() leaves
        self._pages: dict[str, Callable[[], Awaitable[tuple[int, bytes, bytes]]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/openapi.json": self._openapi,
            "/docs": self._docs,
        }
        self._spec = _openapi.SpecCache(self.directory, title=title)
        self.freeze_gc = False  # freeze_gc() once started (a worker process, which is all ours)

    # -- ASGI --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(self.start, self.stop, receive, send)
        else:  # websocket: not served
            await send({"type": "websocket.close", "code": 1003})

    async def start(self) -> None:
        """Connect (when the gateway owns the Mesh), load the HTTP routes, scan the services.

        Left half-way (an error, a cancel), what was entered is left again.
        """
        if self._stack is not None:
            raise RuntimeError("the gateway is started already")
        stack = self._stack = AsyncExitStack()
        try:
            if self.owns_mesh:
                await stack.enter_async_context(self.mesh)
            await stack.enter_async_context(self.directory)
            await self._routes(wait=5.0)
        except BaseException:
            await self.stop()
            raise
        self._limit()
        self.directory.warm()  # the first scan fills the directory; requests do not wait
        if self.freeze_gc:
            freeze_gc()

    async def stop(self) -> None:
        """Leave what start() entered: the directory (its lookups stop), then the Mesh."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    # -- one request ------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        if len(path) > 1 and path[-1] == "/":
            # /products/1/ is /products/1, as most HTTP frameworks and users take it.
            path = path[:-1]
            scope = {**scope, "path": path}
        page = self._pages.get(path)
        if page is not None:
            try:
                check_head(scope["headers"], self.limits)
                policy = self._page_policy(path)
                if policy is not None:
                    self._authenticate(policy, collect(scope["headers"], self._credentials))
            except GatewayError as refused:
                await send_error(send, refused)
                return
            await send_page(scope, send, page)
            return
        if path in _FALLBACKS and scope["method"] in ("GET", "HEAD") and await self._unrouted(path):
            await self._fallback(scope, send, path)
            return
        # Filled in once the target is known to exist: label values never come from
        # paths that lead nowhere.
        labels = ["", ""]
        self.in_flight += 1
        try:
            if self.in_flight > self.limits.max_concurrency:
                raise _errors.overloaded("the gateway is at its concurrency limit, retry later")
            body = await self._handle(scope, receive, path, labels, started)
            await send(
                {"type": "http.response.start", "status": 200, "headers": json_headers(len(body))}
            )
            await send({"type": "http.response.body", "body": body})
            status = 200
        except Disconnected:
            status = 499  # nginx's name for it: the client went away first
        except Exception as exc:
            error = _errors.from_exception(exc)
            log_failure(exc, error, scope["method"], labels)
            status = error.status
            await send_error(send, error)
        finally:
            self.in_flight -= 1
        self.metrics.observe(labels[0], labels[1], status, time.perf_counter() - started)

    async def _handle(
        self, scope: Scope, receive: Receive, path: str, labels: list[str], now: float
    ) -> bytes:
        request = Head.read(
            scope["headers"], self.forward, self.limits, credentials=self._credentials
        )
        raw_path = scope.get("raw_path") or b""
        if b"%" in raw_path and b"%2f" in raw_path.lower():
            # An encoded '/' would be a separator once decoded: one path, two readings.
            raise GatewayError(400, "bad_path", "a path must not contain an encoded '/'")
        found = await self._resolve(scope["method"], path, now)
        caller = None
        if self.auth is not None:
            policy = self.auth.policy(scope["method"], path, found.target)
            caller = self._authenticate(policy, request.credentials)
        doc = self.directory.get(found.service, found.endpoint)
        if doc is None and found.by_default:
            doc = await self._endpoint(found)
        labels[0], labels[1] = found.service, found.endpoint
        body = await read_body(receive, self._limit(), request.content_length)
        payload = payload_of(body, request, found, doc, scope["query_string"], self.limits)
        # Without a route timeout or a client budget, Mesh.call applies the service's.
        timeout = found.timeout
        if request.budget is not None:
            timeout = min(timeout or await self.mesh.route_timeout(found.service), request.budget)
        context = None
        if request.traceparent is not None:
            # The call is a nested call of this HTTP request: it continues the client's trace.
            if timeout is None:
                timeout = await self.mesh.route_timeout(found.service)
            context = Context(
                service="gateway",
                endpoint=found.template or "default",
                headers={"traceparent": request.traceparent},
                deadline=time.monotonic() + timeout,
                mesh=None,
            )
        result = await self.mesh.call(
            found.target,
            payload,
            timeout=timeout,
            headers=request.forwarded or None,
            context=context,
            caller=caller,
        )
        return pydantic_core.to_json(result, inf_nan_mode="null", bytes_mode="base64")

    async def _resolve(self, method: str, path: str, now: float) -> Match:
        """The route of ``method path``; raises GatewayError (400, 404, 405) when none."""
        router = self.router
        if now >= self._routes_due:
            router = await self._routes()
            self._routes_due = now + ROUTES_RECHECK
        found = router.resolve(method, path)
        if isinstance(found, BadPath):
            raise GatewayError(400, "bad_path", found.reason)
        if found is None:
            raise GatewayError(404, "unknown_route", "no route for this path")
        if isinstance(found, WrongMethod):
            raise GatewayError(
                405,
                "method_not_allowed",
                "method not allowed",
                headers=((b"allow", self._allowed(found, path)),),
            )
        return found

    async def _unrouted(self, path: str) -> bool:
        """Whether no HTTP route takes a GET of ``path`` (the table's routes come first)."""
        found = (await self._routes()).resolve("GET", path)
        return found is None or isinstance(found, BadPath)

    async def _fallback(self, scope: Scope, send: Send, path: str) -> None:
        if path == "/favicon.ico":
            # Browsers ask for it on every page: "no content" is no error in their consoles.
            headers = [(b"cache-control", b"public, max-age=86400")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_page(scope, send, self._index)

    async def _index(self) -> tuple[int, bytes, bytes]:
        pages = {"gateway": self.title, "docs": "/docs", "openapi": "/openapi.json"}
        pages |= {"health": "/healthz", "ready": "/readyz", "metrics": "/metrics"}
        return 200, JSON, pydantic_core.to_json(pages)

    def _authenticate(self, policy: Policy, credentials: list[tuple[bytes, bytes]]) -> str | None:
        """The caller to name in the call (None: the gateway's own); raises GatewayError."""
        assert self.auth is not None
        try:
            who = self.auth.check(policy, credentials)
        except Denied as exc:
            self.metrics.auth_failure(exc.reason)
            # The reason only: never the credential, which may be a live secret.
            log.debug("request refused: %s %s", exc.status, exc.reason)
            raise GatewayError(
                exc.status,
                "unauthorized" if exc.status == 401 else "forbidden",
                exc.message,
                headers=tuple((b"www-authenticate", c) for c in exc.challenges),
            ) from None
        return None if who is None else who.caller

    def _page_policy(self, path: str) -> Policy | None:
        """The access to a page; None for the probes, which are always open."""
        if self.auth is None or path in ("/healthz", "/readyz"):
            return None
        return self.auth.metrics_policy if path == "/metrics" else self.auth.docs_policy

    def _allowed(self, found: WrongMethod, path: str) -> bytes:
        allowed = found.allowed
        if "POST" not in allowed and self.router.default_route:
            # /orders/place: GET by the table's /orders/{id}, POST by the default route.
            service, _, endpoint = path[1:].partition("/")
            if self.directory.get(service, endpoint) is not None:
                allowed = (*allowed, "POST")
        return ", ".join(allowed).encode()

    async def _endpoint(self, found: Match) -> EndpointDoc | None:
        if not found.by_default:
            return self.directory.get(found.service, found.endpoint)
        doc = await self.directory.find(found.service, found.endpoint)
        if doc is None:
            # Never asked of the mesh: a random name must not cost a table load or a watch.
            raise GatewayError(404, "unknown_route", "no such service or endpoint")
        return doc

    async def _routes(self, *, wait: float = 0.25) -> Router:
        routes: tuple[HttpRoute, ...] = await self.mesh.http_routes(wait=wait)
        if routes is not self.router.routes:
            self.router = Router(routes, default_route=self._default_route)
        return self.router

    def _limit(self) -> int:
        limit = self._body_limit
        if limit is None:
            try:
                max_payload = self.mesh.max_payload
            except RuntimeError:  # not connected yet: the configured limit, for now
                return self.limits.max_body
            limit = self._body_limit = self.limits.body_limit(max_payload)
        return limit

    # -- the gateway's own pages -------------------------------------------------------

    async def _healthz(self) -> tuple[int, bytes, bytes]:
        return 200, JSON, b'{"status":"ok"}'

    async def _readyz(self) -> tuple[int, bytes, bytes]:
        await self._routes(wait=1.0)
        # Connected is not enough: a frozen or partitioned server keeps the socket open.
        ready = self.mesh.ready and await self._nats_answers()
        body = pydantic_core.to_json(
            {"status": "ready" if ready else "not ready", "routes": len(self.router.routes)}
        )
        return (200 if ready else 503), JSON, body

    async def _nats_answers(self) -> bool:
        try:
            await self.mesh.ping(timeout=READY_PING)
        except Exception as exc:  # nats-py's timeout, or a connection closed or reconnecting
            log.info("readiness: NATS did not answer a ping: %r", exc)
            return False
        return True

    async def _metrics(self) -> tuple[int, bytes, bytes]:
        return 200, METRICS_TYPE.encode(), self.metrics.render()

    async def _openapi(self) -> tuple[int, bytes, bytes]:
        router = await self._routes()
        return 200, JSON, await self._spec.get(router)

    async def _docs(self) -> tuple[int, bytes, bytes]:
        return 200, b"text/html; charset=utf-8", _docs.PAGE


def freeze_gc() -> None:
    """Keep what startup built out of the garbage collector's full passes.

    A long-lived server holds hundreds of thousands of objects (modules, models,
    schemas); every full collection walks them all, and under load that is a
    pause of tens of milliseconds at the p99. Frozen, they are not walked again.
    """
    gc.collect()
    gc.freeze()
    # Most of what a request allocates dies with it: collecting the youngest generation
    # less often leaves it to die uncollected instead of being walked (700 by default).
    gc.set_threshold(20_000, 20, 20)
