"""The caller's copy of the control plane's tables, kept current and reported.

A ``Mesh`` loads ``routes.<service>`` and ``registry.<service>`` the first time it
calls a service, and only for the services it calls. It follows the subjects the
bucket republishes each write of those keys to (``<prefix>._ctl.table.<key>``,
one message per change, with its revision), and reads them by JetStream direct
get at first use and on a periodic reconcile (a republished message can be
missed across a reconnect). A caller therefore never creates a JetStream
consumer: its grants are a publish per key it may read and a subscription per
key's subject, nothing that could aim deliveries elsewhere or fill the stream's
consumer limit. Each change builds a new immutable :class:`Snapshot`, so
readers on the call path never block (the grpc Picker style). Every applied or
rejected change, and a keepalive every ``report_interval``, is published as a
:class:`StatusReport` on ``<prefix>._ctl.status.<identity>`` for the controller's
status view; a last one, on closing, says the client left.

The gateway's ``http`` table rides on the same machinery under the name
``HTTP_TABLE`` (which no service can have): ``ensure(HTTP_TABLE)`` loads and
follows the one ``http`` key, and its snapshot carries the validated routes.

Without a bucket (no JetStream, no controller yet) the mesh works without tables;
the reconcile reads again every interval. With the controller down, the tables
already applied stay, and direct gets still answer while JetStream runs.

With ``follow=False`` (one-shot tools) each service's keys are read once: no
subscription, no reconcile, no status reports.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal, Self

import anyio
import pydantic
from anyio.abc import TaskGroup

from natsmesh.traffic._routes import HttpRoute, RouteConfig, ServicePolicy
from natsmesh.transport._kv import Entry, Unavailable, entry_of, read_direct
from natsmesh.transport._link import Link, Subscription
from natsmesh.transport._tasks import background
from natsmesh.transport._transport import Msg
from natsmesh.wire._control import (
    HTTP_KEY,
    HTTP_TABLE,
    Applied,
    HttpTable,
    RegistryTable,
    RouteTable,
    StatusReport,
    identity_of,
    registry_key,
    routes_key,
    status_subject,
    table_subject,
)

log = logging.getLogger("natsmesh.tables")

__all__ = ["Snapshot", "TableCache"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one caller applied for one service; replaced whole on every change."""

    route: RouteTable | None = None
    registry: RegistryTable | None = None
    applied: Applied = field(default_factory=Applied)
    policy: ServicePolicy | None = None  # the route table's policy, validated
    http: tuple[HttpRoute, ...] = ()  # HTTP_TABLE only: the gateway's routes, validated

    @property
    def timeout(self) -> float | None:
        """The route policy's timeout, seconds."""
        return None if self.policy is None else self.policy.timeout


_EMPTY = Snapshot()


class TableCache:
    """The tables of the services one client calls. Use as an async context manager."""

    def __init__(
        self,
        link: Link,
        *,
        client_name: str,
        kind: Literal["client", "gateway", "service"] = "client",
        prefix: str = "mesh",
        reconcile_interval: float = 10.0,
        report_interval: float = 10.0,
        follow: bool = True,
    ) -> None:
        if reconcile_interval <= 0 or report_interval <= 0:
            raise ValueError("intervals must be positive")
        self._link = link
        self.client_name = client_name[:256]
        self.kind = kind
        self.reconcile_interval = reconcile_interval
        self.report_interval = report_interval
        self.follow = follow
        self._prefix = prefix
        # The subject names the sender; under a policy only that identity may publish it.
        self.identity = identity_of(link.new_inbox(), self.client_name)
        self._status_subject = status_subject(prefix, self.identity)
        self._snapshots: dict[str, Snapshot] = {}
        self._seen: dict[str, int] = {}  # key -> newest revision handled (applied or rejected)
        self._rejected: dict[str, str] = {}  # key -> why its newest value was refused
        # service -> set when its first load is over; the load runs in the cache's task
        # group, so a caller that stops waiting (or is cancelled) leaves it to the others.
        self._loading: dict[str, anyio.Event] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._tg: TaskGroup | None = None
        self._stack = AsyncExitStack()
        self._unavailable_logged = False
        # Python 3.11's asyncio.wait_for (inside nats-py's requests) can swallow a
        # cancellation: every loop also checks this flag (anyio cancels again anyway).
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise RuntimeError("a TableCache is entered once")
        # Held from here to __aexit__, so entered and left in one task, in order (a
        # Mesh checks that: see _tasks.Nesting). Nothing after this line can fail.
        self._stack = AsyncExitStack()
        self._tg = tg = await self._stack.enter_async_context(background())
        if self.follow:
            tg.start_soon(self._reconcile_loop)
            tg.start_soon(self._report_loop)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        self._tg = None
        # Stops the loops and the loads in flight (each sets its event on the way out).
        await self._stack.aclose()
        subs = [sub for subs in self._subs.values() for sub in subs]
        self._loading, self._subs = {}, {}
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection took its subscriptions along
                log.debug("unsubscribing a table subject: %r", exc)
        if self._snapshots and self.follow:
            # The controller drops this client from its status at once, instead of
            # listing it as stale until it stops expecting reports.
            await self._report(left=True)

    # -- the call path: lookups that never block -------------------------------------

    def __contains__(self, service: object) -> bool:
        """Whether ``service`` was asked for and its first load is over."""
        return service in self._snapshots

    def route(self, service: str) -> RouteTable | None:
        return self._snapshots.get(service, _EMPTY).route

    def snapshot(self, service: str) -> Snapshot:
        """Everything applied for ``service`` (empty tables when nothing is)."""
        return self._snapshots.get(service, _EMPTY)

    def registry(self, service: str) -> RegistryTable | None:
        return self._snapshots.get(service, _EMPTY).registry

    @property
    def loaded(self) -> bool:
        """Whether no first load is in progress (every table asked for has been read)."""
        return not self._loading

    def revisions(self, service: str) -> Applied:
        return self._snapshots.get(service, _EMPTY).applied

    def timeout(self, service: str) -> float | None:
        return self._snapshots.get(service, _EMPTY).timeout

    async def ensure(self, service: str, *, wait: float = 0.25) -> None:
        """Load ``service``'s tables and watch them (if following), once; wait at most ``wait`` s.

        Concurrent first callers share one load, run in the cache's task group: a
        caller that gives up waiting, or is cancelled, goes on without tables and the
        load finishes for the others. Raises only if the cache was never entered.
        """
        if service in self._snapshots or self._closed:
            return
        done = self._loading.get(service)
        if done is None:
            if self._tg is None:
                raise RuntimeError("enter the TableCache (async with) before asking it")
            done = self._loading[service] = anyio.Event()
            self._tg.start_soon(self._first_load, service, done)
        with anyio.move_on_after(wait):
            await done.wait()

    # -- I/O -----------------------------------------------------------------------------

    async def _first_load(self, service: str, done: anyio.Event) -> None:
        try:
            changed = await self._load(service)
            # Not when cancelled: a cache closed mid-load has not loaded the service.
            self._snapshots.setdefault(service, _EMPTY)
        finally:
            self._loading.pop(service, None)
            done.set()
        if changed and self.follow:
            await self._report()

    async def _load(self, service: str) -> bool:
        """Follow, then read ``service``'s keys; whether anything changed. Logs, never raises."""
        try:
            # Follow first, then read: a change between the two is caught either way
            # (the revision check drops whichever copy comes second).
            await self._follow(service)
            return await self._read(service)
        except Unavailable as exc:
            self._log_unavailable(service, exc)
        except Exception:  # a closed connection, say: the reconcile reads again
            log.warning("first load of the tables of %s failed", service, exc_info=True)
        return False

    def _log_unavailable(self, service: str, exc: Unavailable) -> None:
        if not self._unavailable_logged:
            self._unavailable_logged = True
            log.info("no tables for %s yet (the mesh works without them): %s", service, exc)
        else:
            log.debug("tables of %s: %s", service, exc)

    async def _read(self, service: str) -> bool:
        """Get both keys of ``service`` and apply what is newer; whether anything changed."""
        keys = _keys(service)
        before = [self._seen.get(key, 0) for key in keys]
        # Both gets first, then both applies: no reader sees half of a load.
        entries = [await read_direct(self._link, key) for key in keys]
        changed = False
        for key, seen, entry in zip(keys, before, entries, strict=True):
            if entry is not None:
                changed |= self._apply(service, entry)
            elif self._seen.get(key, 0) == seen:  # else a newer value came meanwhile
                changed |= self._clear(service, key)
        return changed

    async def _follow(self, service: str) -> None:
        """Subscribe to the subjects the bucket republishes ``service``'s keys to, once."""
        if service in self._subs or self._closed or not self.follow:
            return
        self._subs[service] = []

        async def on_change(msg: Msg) -> None:
            entry = entry_of(msg)
            if entry is None or entry.key not in _keys(service):
                return  # nothing the server republished: only its headers name a key
            if self._apply(service, entry):
                await self._report()

        for key in _keys(service):
            sub = await self._link.subscribe(table_subject(self._prefix, key), cb=on_change)
            self._subs[service].append(sub)

    async def reconcile(self) -> None:
        """Read every followed key again and apply what the subjects missed."""
        changed = False
        try:
            for service in list(self._snapshots):
                changed |= await self._read(service)
        except Unavailable as exc:
            log.debug("reconcile: %s", exc)
        if changed:
            await self._report()

    async def _reconcile_loop(self) -> None:
        while not self._closed:
            await anyio.sleep(self.reconcile_interval)
            try:
                await self.reconcile()
            except Exception:  # the group must not fail: that would cancel its owner
                log.warning(
                    "reconciling the tables failed (next in %ss)",
                    self.reconcile_interval,
                    exc_info=True,
                )

    async def _report_loop(self) -> None:
        while not self._closed:
            await anyio.sleep(self.report_interval)
            if self._snapshots:
                await self._report()  # never raises

    async def _report(self, *, left: bool = False) -> None:
        report = StatusReport(
            client=self.client_name,
            kind=self.kind,
            services={s: snap.applied for s, snap in list(self._snapshots.items())[:10_000]},
            interval=min(self.report_interval, 3600.0),
            left=left,
        )
        try:
            await self._link.publish(self._status_subject, report.model_dump_json().encode())
        except Exception as exc:  # a closed or reconnecting connection: the next report retries
            log.debug("status report not sent: %s", exc)

    # -- applying: synchronous, so a snapshot never changes halfway -----------------------

    def _apply(self, service: str, entry: Entry) -> bool:
        """Apply one KV entry (a value or a deletion) if it is newer than what was handled."""
        if entry.revision <= self._seen.get(entry.key, 0):
            return False  # old news: a stalled watch catching up, or a get racing the watch
        self._seen[entry.key] = entry.revision
        if entry.value is None:
            return self._clear(service, entry.key)
        snap = self._snapshots.get(service, _EMPTY)
        try:
            if entry.key == routes_key(service):
                route = RouteTable.model_validate_json(entry.value)
                _check(service, route)
                policy = _policy(route)
                applied = snap.applied.model_copy(update={"routes": entry.revision})
                snap = replace(snap, route=route, policy=policy, applied=applied)
            elif entry.key == registry_key(service):
                registry = RegistryTable.model_validate_json(entry.value)
                _check(service, registry)
                applied = snap.applied.model_copy(update={"registry": entry.revision})
                snap = replace(snap, registry=registry, applied=applied)
            elif entry.key == HTTP_KEY and service == HTTP_TABLE:
                http = _http_routes(HttpTable.model_validate_json(entry.value))
                applied = snap.applied.model_copy(update={"routes": entry.revision})
                snap = replace(snap, http=http, applied=applied)
            else:
                return False  # another table under the wildcard: not ours to read
        except (pydantic.ValidationError, ValueError) as exc:
            reason = f"revision {entry.revision}: {_reason(exc)}"
            log.warning("rejected %s %s (keeping the last good table)", entry.key, reason)
            self._rejected[entry.key] = reason
        else:
            self._rejected.pop(entry.key, None)
        self._publish(service, snap)
        return True

    def _clear(self, service: str, key: str) -> bool:
        snap = self._snapshots.get(service, _EMPTY)
        if key == routes_key(service) and snap.route is not None:
            snap = replace(snap, route=None, policy=None)
        elif key == registry_key(service) and snap.registry is not None:
            snap = replace(snap, registry=None)
        elif key == HTTP_KEY and service == HTTP_TABLE and snap.http:
            snap = replace(snap, http=())
        elif key not in self._rejected:
            return False
        self._rejected.pop(key, None)
        self._publish(service, snap)
        return True

    def _publish(self, service: str, snap: Snapshot) -> None:
        reasons = [self._rejected[k] for k in _keys(service) if k in self._rejected]
        applied = snap.applied.model_copy(update={"rejected": "; ".join(reasons)[:1024]})
        self._snapshots[service] = replace(snap, applied=applied)


def _keys(service: str) -> tuple[str, ...]:
    """The KV keys kept for ``service`` (or for HTTP_TABLE, the one ``http`` key)."""
    if service == HTTP_TABLE:
        return (HTTP_KEY,)
    return (routes_key(service), registry_key(service))


def _http_routes(table: HttpTable) -> tuple[HttpRoute, ...]:
    # Validated as a whole config would be: each route, and no two of the same shape.
    return tuple(RouteConfig.model_validate({"http": table.routes}).http)


def _check(service: str, table: RouteTable | RegistryTable) -> None:
    """Refuse a table that is not ``service``'s."""
    if table.service != service:
        raise ValueError(f"the table is for service {table.service!r}")


def _policy(route: RouteTable) -> ServicePolicy:
    try:
        return ServicePolicy.model_validate(route.policy)
    except pydantic.ValidationError as exc:
        raise ValueError(f"policy.{_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        return f"{where}: {first['msg']}"[:300]
    return str(exc)[:300]
