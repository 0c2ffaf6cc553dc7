"""The ``Mesh`` client: call ``service.endpoint`` with a budget, typed results and typed errors.

The call path: resolve the target to a subject (by convention for natsmesh
services; through ``$SRV`` discovery for micro services in other languages,
which are sent JSON) → encode → send with the remaining budget in a header →
on *no responders* or *overloaded*, retry within the budget → decode the reply
or raise the error it carries.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar, overload

from natsmesh.client import _discovery
from natsmesh.client._call import Caller
from natsmesh.client._replies import call_headers, decode_reply, encode_payload
from natsmesh.client._resolve import Resolver
from natsmesh.client._running import Call
from natsmesh.client._tables import TableCache
from natsmesh.client._upstream import Upstream
from natsmesh.observe._hooks import CallObserver, NoObserver
from natsmesh.traffic._backoff import budget
from natsmesh.traffic._routes import HttpRoute, ServicePolicy
from natsmesh.traffic._traffic import DEFAULT_POLICY
from natsmesh.transport._link import Link
from natsmesh.transport._tasks import Nesting
from natsmesh.transport._transport import Requester
from natsmesh.wire import _codec, _headers, _micro
from natsmesh.wire._codec import Limits
from natsmesh.wire._control import HTTP_TABLE, RegistryTable
from natsmesh.wire._subjects import Subjects, validate_name

if TYPE_CHECKING:  # the escape hatch's type only: everything else goes through a Link
    from natsmesh.transport._transport import NATS

log = logging.getLogger("natsmesh.client")
T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 5.0
# Seconds a first call waits for its service's tables (then it goes on without them),
# never past its budget; and for a $SRV answer after no responders, the same.
FIRST_LOAD_WAIT: Final = 0.25
ONE_SHOT_LOAD_WAIT: Final = 2.0  # the same, for a client that does not watch them
_CLOSE_WITHIN: Final = 10.0  # a drain of a connection the Mesh opened, then it is closed


class Mesh:
    """A client of the mesh.

    ``nats`` is a server URL (default: ``NATS_URL``, then ``nats://127.0.0.1:4222``)
    or a connection the caller owns. ``name`` identifies the caller to services
    (the ``Mesh-Caller`` header). Use as an async context manager.

    With ``tables`` (the default) the client loads the control plane's tables
    of each service it calls, on the first call, and keeps them current; without
    a controller it works the same, by convention. With ``watch=False`` it reads
    each service's tables once (two KV gets, no KV watch, no status reports): for
    a one-shot tool that makes a call or two and leaves.

    ``connect_timeout`` (seconds) makes a client that connects itself give up
    with :class:`NatsUnreachable` when no server answers in time (and at once
    when the server refuses the credentials); None, the default, keeps trying,
    as a long-running process started before its server wants.

    ``metrics`` (the default) counts every call for the mesh's observers (the
    dashboard, ``natsmesh observe``), which ask for the counts; without one it
    costs a few integer increments per call and nothing on the network.

    ``zone`` is where this client runs (default ``NATSMESH_ZONE``, else its NATS
    server's cluster name): p2c and hash prefer instances in it, then the route's
    ``zones`` in order, then any other.
    """

    def __init__(
        self,
        nats: str | NATS | None = None,
        *,
        name: str = "client",
        prefix: str = "mesh",
        timeout: float = DEFAULT_TIMEOUT,
        policy: ServicePolicy | None = None,
        limits: Limits = _codec.DEFAULT_LIMITS,
        tables: bool = True,
        kind: Literal["client", "gateway", "service"] = "client",
        zone: str | None = None,
        watch: bool = True,
        connect_timeout: float | None = None,
        metrics: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if connect_timeout is not None and connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self._nats: str | NATS | Link | None = nats
        self.name = name
        self._subjects = Subjects(prefix)
        self.timeout = timeout
        self.policy = policy or DEFAULT_POLICY
        self._limits = limits
        self._link: Link | None = None
        self._resolver: Resolver | None = None
        self._rng = random.Random()
        self._requester: Requester | None = None
        self._caller: Caller | None = None
        self._context: Upstream | None = None
        self._use_tables = tables
        self._watch = watch
        self._connect_timeout = connect_timeout
        self._kind = kind
        # Instances in this zone are preferred (p2c, hash); default: NATSMESH_ZONE, else
        # the NATS cluster name of the server this client is connected to.
        self.zone = zone if zone is not None else os.environ.get("NATSMESH_ZONE")
        self._tables: TableCache | None = None
        self._observer = CallObserver() if metrics else NoObserver()
        self._stack: AsyncExitStack | None = None
        # Its Requester holds a task group: see _tasks.Nesting.
        self._nesting = Nesting(f"Mesh {name!r}")

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this Mesh is entered already")
        stack = self._stack = AsyncExitStack()
        try:
            await self._open(stack)
        except BaseException:
            await self._close()
            raise
        self._nesting.enter()
        return self

    async def _open(self, stack: AsyncExitStack) -> None:
        """Everything __aenter__ does, each step undone by ``stack`` (in reverse)."""
        link = self._link = await Link.open(
            self._nats, name=self.name, give_up_after=self._connect_timeout
        )
        stack.push_async_callback(link.release, within=_CLOSE_WITHIN)
        stack.callback(self._forget)
        requester = await stack.enter_async_context(link.requester())
        self._requester = requester
        self._resolver = Resolver(link, self._subjects)
        self._caller = Caller(
            link,
            requester,
            self._subjects,
            name=self.name,
            rng=self._rng,
            resolver=self._resolver,
        )
        self._caller.zone = self.zone if self.zone is not None else link.zone
        caller = self._caller
        await self._observer.start(
            link, prefix=self._subjects.prefix, name=self.name, zone=lambda: caller.zone
        )
        stack.push_async_callback(self._observer.stop)
        if self._use_tables:
            cache = TableCache(
                link,
                client_name=self.name,
                kind=self._kind,
                prefix=self._subjects.prefix,
                follow=self._watch,
            )
            self._tables = await stack.enter_async_context(cache)

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._nesting.exit()  # out of order or from another task: a RuntimeError, and no harm
        await self._close()

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _forget(self) -> None:
        self._tables = None
        self._requester = None
        self._caller = None
        self._resolver = None
        self._link = None

    def bound(self, context: Upstream) -> Mesh:
        """This client, making every call as a nested call of ``context``'s request."""
        view = copy.copy(self)  # shares the connection, routes, requester and tables
        view._context = context
        return view

    @property
    def nats(self) -> NATS:
        """The escape hatch: this client's nats-py connection (``nats.aio.client.Client``).

        For what natsmesh does not wrap (a raw publish, a subscription of your own,
        ``max_payload``). Shared with the mesh: do not close or drain it. Raises
        RuntimeError before ``async with``.
        """
        return link_of(self).nats

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (bytes); RuntimeError before ``async with``."""
        return link_of(self).max_payload

    async def ping(self, *, timeout: float = 1.0) -> None:
        """Return once the server has answered a ping: raises when it does not within
        ``timeout`` seconds, or the connection is closed or reconnecting.
        """
        await link_of(self).ping(timeout)

    @overload
    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        response: type[T],
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        context: Upstream | None = None,
        caller: str | None = None,
    ) -> T: ...

    @overload
    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        response: None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        context: Upstream | None = None,
        caller: str | None = None,
    ) -> Any: ...

    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        response: Any = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        context: Upstream | None = None,
        caller: str | None = None,
    ) -> Any:
        """Call ``"service.endpoint"`` and return its reply.

        ``payload`` is a pydantic model, JSON-able values, or raw bytes. With
        ``response`` (a model or any type pydantic validates) the reply is
        validated into it; otherwise the decoded value (or bytes for a raw
        endpoint) is returned. ``timeout`` is the whole call's budget, retries
        included, capped by ``context``'s remaining budget for a nested call;
        without either, the service's route timeout, else the client's.

        ``caller`` names who this call is made for in the ``Mesh-Caller`` header
        (``ctx.caller`` in the service) instead of the client's ``name``: a front
        door such as the HTTP gateway passes the identity it verified. It is
        printable ASCII, 1 to 256 characters, else ValueError.

        Raises NoResponders, DeadlineExceeded, RemoteError (InvalidRequest,
        UnknownEndpoint, Overloaded), InvalidReply, or InvalidName for a bad target.
        """
        runner, resolver = self._caller, self._resolver
        if runner is None or resolver is None:
            raise RuntimeError("use 'async with Mesh(...)' before calling")
        context = context or self._context
        route = resolver.routes.get(target) or resolver.route(target)
        started = time.monotonic()
        policy, registry, left = await self._applied(route.service, timeout, context)
        # A call outside any trace sends no traceparent: the callee starts the trace
        # (see _headers), and a sampled traceparent costs nats-server a header parse.
        traceparent = context.trace.child().header() if context is not None else None
        span, traceparent = self._observer.begin(  # observe hook: the call's span, if tracing
            route.service, route.endpoint, context.trace if context else None, traceparent
        )
        subset = None
        try:
            call = Call(
                target,
                route,
                payload,
                encode_payload(payload, route.codec),
                started + left,
                call_headers(headers, caller),
                traceparent,
                context is not None and context.headers.get(_headers.RETRYING) == "1",
            )
            route, msg, subset = await runner.run(call, policy, registry)
            result = decode_reply(route, msg, response, self._limits)
        except BaseException as exc:
            self._observer.done(route.service, route.endpoint, subset, exc, started, span)
            raise
        self._observer.done(route.service, route.endpoint, subset, None, started, span)
        return result

    async def _applied(
        self, service: str, timeout: float | None, context: Upstream | None
    ) -> tuple[ServicePolicy, RegistryTable | None, float]:
        """The service's policy and registry from the tables, and the call's budget: the
        route's timeout when neither the call nor its context sets one."""
        # The budget as known before the tables are read (raises ValueError for a bad one).
        left = budget(
            self.timeout if timeout is None else timeout,
            None if context is None else context.remaining,
        )
        tables = self._tables
        if tables is None:
            return self.policy, None, left
        if service not in tables:
            # Only the first calls of a service wait, and never past their budget.
            await tables.ensure(service, wait=self._first_load_wait(left))
        snapshot = tables.snapshot(service)
        if snapshot.policy is None:
            return self.policy, snapshot.registry, left
        if timeout is None and context is None:
            left = snapshot.policy.timeout  # the route's timeout, from the call's start
        return snapshot.policy, snapshot.registry, left

    def _first_load_wait(self, left: float) -> float:
        # A watching client goes on by convention after a moment: its tables follow.
        # A one-shot client has no later call to apply them to, so it waits for its
        # snapshot (two KV gets), within half of the call's budget.
        if self._watch:
            return min(FIRST_LOAD_WAIT, left)
        return min(ONE_SHOT_LOAD_WAIT, left / 2)

    def metrics(self) -> dict[str, dict[str, int]]:
        """Counters per service called: requests, retries, hedges, failovers, ejections, ..."""
        if self._caller is None:
            return {}
        return {name: t.metrics() for name, t in sorted(self._caller.traffic.items())}

    async def services(self, name: str | None = None, *, timeout: float = 1.0) -> list[_micro.Info]:
        """INFO of every running service instance (natsmesh or not), optionally of one name."""
        return await _discovery.gather(
            link_of(self), "INFO", _micro.Info, name=name, timeout=timeout
        )

    # -- for front doors (the HTTP gateway) ---------------------------------------------

    async def http_routes(self, *, wait: float = 0.25) -> tuple[HttpRoute, ...]:
        """The HTTP routes of the control plane's ``http`` table, validated.

        The first call loads the table and watches it, waiting at most ``wait``
        seconds (the routes are empty until it is loaded); later calls answer at
        once from the current snapshot. Empty without a controller, or with
        ``tables=False``.
        """
        tables = self._tables
        if tables is None:
            return ()
        if HTTP_TABLE not in tables:
            await tables.ensure(HTTP_TABLE, wait=wait)
        return tables.snapshot(HTTP_TABLE).http

    async def route_timeout(self, service: str) -> float:
        """The budget a call to ``service`` gets when it names none: its route's, else ours.

        Loads ``service``'s tables as its first call would. Raises InvalidName.
        """
        validate_name("service", service)
        tables = self._tables
        if tables is None:
            return self.timeout
        if service not in tables:
            await tables.ensure(service)
        timeout = tables.timeout(service)
        return self.timeout if timeout is None else timeout

    @property
    def ready(self) -> bool:
        """Connected to NATS, and the first load of every table asked for is over."""
        link = self._link
        if link is None or not link.is_connected:
            return False
        return self._tables is None or self._tables.loaded


def on_link(mesh: Mesh, link: Link) -> Mesh:
    """``mesh``, made to use ``link`` (a connection natsmesh holds already) when entered."""
    mesh._nats = link
    return mesh


def link_of(mesh: Mesh) -> Link:
    """The connection ``mesh`` uses, for natsmesh's own layers above the client (a
    service's runtime, the dashboard's observer); RuntimeError before ``async with``.
    """
    if mesh._link is None:
        raise RuntimeError("use 'async with Mesh(...)' before calling")
    return mesh._link
