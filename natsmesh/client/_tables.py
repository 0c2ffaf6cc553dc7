"""The caller's copy of the control plane's tables, kept current and reported.

A ``Mesh`` loads ``routes.<service>`` and ``registry.<service>`` from the KV
bucket the first time it calls a service, and only for the services it calls.
A KV watch applies changes as they are written; a periodic reconcile reads the
same keys again because a watch can stall for tens of seconds when a cluster's
stream leader dies. Each change builds a new immutable :class:`Snapshot`, so
readers on the call path never block (the grpc Picker style). Every applied or
rejected change, and a keepalive every ``report_interval``, is published as a
:class:`StatusReport` on ``<prefix>._ctl.status`` for the controller's status view;
a last one, on closing, says the client left.

The gateway's ``http`` table rides on the same machinery under the name
``HTTP_TABLE`` (which no service can have): ``ensure(HTTP_TABLE)`` loads and
watches the one ``http`` key, and its snapshot carries the validated routes.

Without a bucket (no JetStream, no controller yet) the mesh works without tables;
opening is retried at most once per reconcile interval.

With ``follow=False`` (one-shot tools) each service's keys are read once: no
watch, no reconcile, no status reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Literal, Self

import anyio
import pydantic

from natsmesh.traffic._routes import HttpRoute, RouteConfig, ServicePolicy
from natsmesh.transport._kv import Entry, Tables, Unavailable
from natsmesh.transport._tasks import stop
from natsmesh.transport._transport import NATS
from natsmesh.wire._control import (
    HTTP_KEY,
    HTTP_TABLE,
    Applied,
    HttpTable,
    RegistryTable,
    RouteTable,
    StatusReport,
    control_subject,
    registry_key,
    routes_key,
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
        nc: NATS,
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
        self._nc = nc
        self.client_name = client_name[:256]
        self.kind = kind
        self.reconcile_interval = reconcile_interval
        self.report_interval = report_interval
        self.follow = follow
        self._status_subject = control_subject(prefix, "status")
        self._snapshots: dict[str, Snapshot] = {}
        self._seen: dict[str, int] = {}  # key -> newest revision handled (applied or rejected)
        self._rejected: dict[str, str] = {}  # key -> why its newest value was refused
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._bucket: Tables | None = None
        self._retry_open_at = 0.0
        self._open_lock = anyio.Lock()
        # Python 3.11's asyncio.wait_for (inside nats-py's requests) can swallow a
        # cancellation: every loop also checks this flag, or a stop could wait forever.
        self._closed = False

    async def __aenter__(self) -> Self:
        if not self.follow:
            return self
        # Plain tasks rather than a task group: a Mesh is entered and exited by its
        # users from any task, which cancel scopes forbid (see _deadlines.running).
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reconcile_loop()),
            loop.create_task(self._report_loop()),
        ]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        tasks = [*self._tasks, *self._loading.values(), *self._watchers.values()]
        self._tasks, self._loading, self._watchers = [], {}, {}
        await stop(tasks)
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

        Concurrent first callers share one load. A call that gives up waiting goes
        on without tables; the load finishes in the background. Never raises.
        """
        if service in self._snapshots or self._closed:
            return
        load = self._loading.get(service)
        if load is None:
            load = asyncio.get_running_loop().create_task(self._first_load(service))
            self._loading[service] = load
        # asyncio.wait leaves the shared load running when this caller stops waiting.
        await asyncio.wait((load,), timeout=wait)

    # -- I/O -----------------------------------------------------------------------------

    async def _first_load(self, service: str) -> None:
        changed = False
        try:
            bucket = await self._open()
            if bucket is not None:
                changed = await self._read(bucket, service)
                self._start_watch(service, bucket)
        except Unavailable as exc:
            log.warning("tables of %s: %s (the reconcile retries)", service, exc)
        finally:
            self._snapshots.setdefault(service, _EMPTY)
            self._loading.pop(service, None)
        if changed and self.follow:
            await self._report()

    async def _open(self) -> Tables | None:
        """The bucket, opened on first use; None while it is unavailable."""
        async with self._open_lock:
            if self._bucket is None and time.monotonic() >= self._retry_open_at:
                try:
                    self._bucket = await Tables.open(self._nc)
                except Unavailable as exc:
                    if not self._retry_open_at:
                        log.info("no tables (the mesh works without a controller): %s", exc)
                    self._retry_open_at = time.monotonic() + self.reconcile_interval
        return self._bucket

    async def _read(self, bucket: Tables, service: str) -> bool:
        """Get both keys of ``service`` and apply what is newer; whether anything changed."""
        keys = _keys(service)
        before = [self._seen.get(key, 0) for key in keys]
        # Both gets first, then both applies: no reader sees half of a load.
        entries = [await bucket.get(key) for key in keys]
        changed = False
        for key, seen, entry in zip(keys, before, entries, strict=True):
            if entry is not None:
                changed |= self._apply(service, entry)
            elif self._seen.get(key, 0) == seen:  # else the watch brought a newer value meanwhile
                changed |= self._clear(service, key)
        return changed

    def _start_watch(self, service: str, bucket: Tables) -> None:
        if service not in self._watchers and not self._closed and self.follow:
            task = asyncio.get_running_loop().create_task(self._watch(service, bucket))
            self._watchers[service] = task

    async def _watch(self, service: str, bucket: Tables) -> None:
        # One wildcard watch covers both keys: "*.<service>" matches routes.<service>
        # and registry.<service> (service names are single tokens) and nothing else we use.
        pattern = HTTP_KEY if service == HTTP_TABLE else f"*.{service}"
        while not self._closed:
            try:
                async with bucket.watch(pattern) as updates:
                    while not self._closed:
                        entry = await updates.get()
                        if self._apply(service, entry):
                            await self._report()
            except Unavailable as exc:
                log.info("watch of %s: %s (retrying)", service, exc)
                await anyio.sleep(self.reconcile_interval)

    async def reconcile(self) -> None:
        """Read every watched key again and apply what the watch missed."""
        bucket = await self._open()
        if bucket is None:
            return
        changed = False
        try:
            for service in list(self._snapshots):
                self._start_watch(service, bucket)  # services asked for before the bucket existed
                changed |= await self._read(bucket, service)
        except Unavailable as exc:
            log.info("reconcile: %s", exc)
        if changed:
            await self._report()

    async def _reconcile_loop(self) -> None:
        while not self._closed:
            await anyio.sleep(self.reconcile_interval)
            await self.reconcile()

    async def _report_loop(self) -> None:
        while not self._closed:
            await anyio.sleep(self.report_interval)
            if self._snapshots:
                await self._report()

    async def _report(self, *, left: bool = False) -> None:
        report = StatusReport(
            client=self.client_name,
            kind=self.kind,
            services={s: snap.applied for s, snap in list(self._snapshots.items())[:10_000]},
            interval=min(self.report_interval, 3600.0),
            left=left,
        )
        try:
            await self._nc.publish(self._status_subject, report.model_dump_json().encode())
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
