"""The controller: registry and route tables, kept in JetStream KV and pushed to callers.

Every controller listens (announcements, heartbeats, leaves, status reports, a
watch on the whole bucket), so a standby is always ready; only the holder of the
``leader`` lease writes, and every write is a compare-and-swap on the key's last
revision, so two controllers never write conflicting tables. A controller that
dies stops renewing its lease and another takes over within a lease period.

Loops, each a task owned by the controller:

- lease: acquire or renew the lease; on winning it, start answering ``routes.apply``;
- write: every few milliseconds, rewrite the registry keys of services that changed;
- expire: drop instances whose heartbeats stopped;
- scan: ``$SRV.INFO`` scatter-gather, so micro services in other languages join.

The leader also hears queue-mode outlier reports from callers and, once enough
callers agree, tells an instance to leave its queue groups for a while (see
``_ejector`` for the quorum and the cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import pydantic

from natsmesh.client import _discovery
from natsmesh.control._ejector import Ejector
from natsmesh.control._registry import Registry, schema_conflicts
from natsmesh.control._status import Clients
from natsmesh.traffic._route_warnings import Live, empty_targets
from natsmesh.traffic._routes import RouteConfig
from natsmesh.transport._kv import Conflict, Entry, Tables, Unavailable
from natsmesh.transport._tasks import stop
from natsmesh.transport._transport import NATS, Msg, Subscription, connect, new_id
from natsmesh.wire import _control, _micro
from natsmesh.wire._control import (
    Announcement,
    ApplyReply,
    EndpointEntry,
    Heartbeat,
    HttpTable,
    Lease,
    Leave,
    OutlierReport,
    RegistryTable,
    RouteTable,
    SchemaConflict,
    StatusReport,
    StatusView,
    control_subject,
    eject_subject,
    instance_subject,
    registry_key,
    routes_key,
    subject_service,
)
from natsmesh.wire._subjects import default_subset

log = logging.getLogger("natsmesh.controller")


class Controller:
    """One controller process's worth of control plane. Use as an async context manager."""

    def __init__(
        self,
        nats: str | NATS | None = None,
        *,
        prefix: str = "mesh",
        controller_id: str | None = None,
        expiry: float = 6.0,
        lease: float = 3.0,
        scan_interval: float = 10.0,
        status_ttl: float = 60.0,
        replicas: int = 1,
    ) -> None:
        self.id = controller_id or new_id()
        self._nats = nats
        self._prefix = prefix
        self._lease_period = lease
        self._scan_interval = scan_interval
        self._replicas = replicas
        self.registry = Registry(expiry=expiry, foreign_expiry=2.5 * scan_interval)
        self.ejector = Ejector()
        self._nc: NATS | None = None
        self._owns_nc = False
        self._tables: Tables | None = None
        self._entries: dict[str, Entry] = {}  # the bucket as last seen, from the watch
        self._dirty: set[str] = set()
        self._clients = Clients(ttl=status_ttl)
        self._conflicts: dict[str, list[SchemaConflict]] = {}
        self._fetching: set[tuple[str, str]] = set()
        self._logged: set[str] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._leader_subs: list[Subscription] = []
        self._lease_revision = 0
        self.is_leader = False
        self.leader_changed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if isinstance(self._nats, NATS):
            self._nc = self._nats
        else:
            self._nc = await connect(self._nats, name=f"natsmesh-controller/{self.id}")
            self._owns_nc = True
        try:
            self._tables = await Tables.open(self._nc, create=True, replicas=self._replicas)
            await self._seed()
            for subject, handler in (
                (instance_subject(self._prefix, "announce", "*"), self._on_announce),
                (instance_subject(self._prefix, "heartbeat", "*"), self._on_heartbeat),
                (instance_subject(self._prefix, "leave", "*"), self._on_leave),
                (instance_subject(self._prefix, "outlier", "*"), self._on_outlier),
                (control_subject(self._prefix, "status"), self._on_status),
            ):
                await self._nc.subscribe(subject, cb=handler)
            loop = asyncio.get_running_loop()
            for job in (self._watch, self._lease_loop, self._write_loop, self._expire_loop):
                self._tasks.append(loop.create_task(job()))
            self._tasks.append(loop.create_task(self._scan_loop()))
            await self._nc.flush()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        await stop(self._tasks)
        if self.is_leader and self._tables is not None:
            # Hand over at once instead of making the standby wait out the lease.
            with contextlib.suppress(Conflict, Unavailable):
                gone = Lease(holder=self.id, expires=0).model_dump_json().encode()
                await self._tables.put(_control.LEADER_KEY, gone, last=self._lease_revision)
        if self._owns_nc and self._nc is not None:
            await self._nc.close()

    async def _seed(self) -> None:
        assert self._tables is not None
        now = time.monotonic()
        for key in await self._tables.keys("registry."):
            entry = await self._tables.get(key)
            if entry is None or entry.value is None:
                continue
            self._entries[key] = entry
            with contextlib.suppress(pydantic.ValidationError):
                self.registry.seed(RegistryTable.model_validate_json(entry.value), now)

    # -- inputs ----------------------------------------------------------------------

    def _parse(self, model: type[_control._Wire], msg: Msg) -> Any:
        if len(msg.data) > _control.MAX_CONTROL_MESSAGE:
            self._log_once(msg.subject, "message too large")
            return None
        try:
            message = model.model_validate_json(msg.data)
        except pydantic.ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "message"
            self._log_once(msg.subject, f"{where}: {first['msg']}")
            return None
        service = getattr(message, "service", None)
        if isinstance(
            message, Announcement | Heartbeat | Leave | OutlierReport
        ) and service != subject_service(msg.subject):
            # Permissions bind a service's identity to its subjects, not to the body.
            self._log_once(msg.subject, f"speaks for another service ({service})")
            return None
        return message

    def _log_once(self, subject: str, reason: str) -> None:
        key = f"{subject}: {reason}"
        if key not in self._logged and len(self._logged) < 1000:
            self._logged.add(key)
            log.warning("rejected a message on %s", key)

    async def _on_announce(self, msg: Msg) -> None:
        announcement = self._parse(Announcement, msg)
        if announcement is not None:
            self._dirty |= self.registry.announce(announcement, time.monotonic())

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = self._parse(Heartbeat, msg)
        if beat is None:
            return
        changed, unknown = self.registry.heartbeat(beat, time.monotonic())
        self._dirty |= changed
        if unknown and (beat.service, beat.id) not in self._fetching and len(self._fetching) < 64:
            # Alive but not known (it announced before this controller started): ask it.
            self._fetching.add((beat.service, beat.id))
            self._tasks.append(asyncio.get_running_loop().create_task(self._fetch(beat)))

    async def _fetch(self, beat: Heartbeat) -> None:
        assert self._nc is not None
        try:
            infos = await _discovery.gather(
                self._nc, "INFO", _micro.Info, name=beat.service, instance_id=beat.id, timeout=1.0
            )
            for info in infos:
                self._dirty |= self.registry.announce(from_info(info), time.monotonic())
        finally:
            self._fetching.discard((beat.service, beat.id))

    async def _on_leave(self, msg: Msg) -> None:
        leave = self._parse(Leave, msg)
        if leave is not None:
            self._dirty |= self.registry.leave(leave)

    async def _on_outlier(self, msg: Msg) -> None:
        report = self._parse(OutlierReport, msg)
        if report is None:
            return
        if not self.is_leader:
            self.ejector.counters.ignored += 1  # the leader alone decides, so none twice
            return
        from natsmesh.traffic._routes import Outlier, ServicePolicy

        policy = Outlier()
        entry = self._entries.get(routes_key(report.service))
        if entry is not None and entry.value is not None:
            with contextlib.suppress(pydantic.ValidationError):
                table = RouteTable.model_validate_json(entry.value)
                policy = ServicePolicy.model_validate(table.policy).outlier
        members = self.registry.instances(report.service)
        population = [m.id for m in members if m.mesh]
        self.ejector.forget(report.service, population)
        command = self.ejector.report(
            report, time.monotonic(), population=population, policy=policy
        )
        if command is None:
            return
        assert self._nc is not None
        log.warning(
            "%s/%s: reported by callers, out of its queue groups for %.1f s",
            command.service,
            command.id,
            command.seconds,
        )
        self._dirty |= self.registry.mark_unhealthy(command.service, command.id)
        subject = eject_subject(self._prefix, command.service, command.id)
        await self._nc.publish(subject, command.model_dump_json().encode())

    async def _on_status(self, msg: Msg) -> None:
        report = self._parse(StatusReport, msg)
        if report is not None:
            self._clients.report(report, time.monotonic())

    # -- loops -------------------------------------------------------------------------

    async def _watch(self) -> None:
        assert self._tables is not None
        while True:
            try:
                async with self._tables.watch(">") as updates:
                    while True:
                        entry = await updates.get()
                        self._entries[entry.key] = entry
            except Unavailable as exc:
                log.warning("bucket watch failed, retrying: %s", exc)
                await asyncio.sleep(1)

    async def _lease_loop(self) -> None:
        while True:
            with contextlib.suppress(Unavailable):
                await self._lease_step()
            await asyncio.sleep(self._lease_period / 3)

    async def _lease_step(self) -> None:
        assert self._tables is not None
        entry = await self._tables.get(_control.LEADER_KEY)
        now = time.time()
        mine = Lease(holder=self.id, expires=now + self._lease_period).model_dump_json().encode()
        lease = None
        if entry is not None and entry.value is not None:
            with contextlib.suppress(pydantic.ValidationError):
                lease = Lease.model_validate_json(entry.value)
        if lease is not None and lease.holder != self.id and lease.expires > now:
            await self._set_leader(False)
            return
        try:
            self._lease_revision = await self._tables.put(
                _control.LEADER_KEY, mine, last=0 if entry is None else entry.revision
            )
        except Conflict:
            await self._set_leader(False)
            return
        await self._set_leader(True)

    async def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        assert self._nc is not None
        self.is_leader = leader
        log.info("controller %s is %s", self.id, "the leader" if leader else "a standby")
        if leader:
            handlers: dict[str, Callable[[Msg], Awaitable[None]]] = {
                "routes.apply": self._on_apply,
                "status.show": self._on_status_show,
            }
            for name, handler in handlers.items():
                subject = control_subject(self._prefix, name)
                self._leader_subs.append(await self._nc.subscribe(subject, cb=handler))
            self._dirty |= set(self.registry.services())
        else:
            for sub in self._leader_subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._leader_subs.clear()
        self.leader_changed.set()
        self.leader_changed = asyncio.Event()

    async def _write_loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            if self.is_leader and self._dirty:
                dirty, self._dirty = self._dirty, set()
                for service in sorted(dirty):
                    self._check_schemas(service)
                    table = self.registry.table(service).model_dump_json().encode()
                    if not await self._write(registry_key(service), table):
                        self._dirty.add(service)

    def _check_schemas(self, service: str) -> None:
        """Log a schema conflict among ``service``'s instances once, when it appears
        (not again as instances come and go on either side of it), and when it ends.
        """
        found = schema_conflicts(self.registry.instances(service))
        before = {_where(c): c for c in self._conflicts.get(service, [])}
        now = {_where(c): c for c in found}
        for where, conflict in now.items():
            if where not in before:
                log.warning("schema conflict: %s", conflict)
        for where, conflict in before.items():
            if where not in now:
                log.info("schema conflict resolved: %s", conflict)
        if found:
            self._conflicts[service] = found
        else:
            self._conflicts.pop(service, None)

    async def _write(self, key: str, value: bytes) -> bool:
        """Compare-and-swap ``key`` to ``value`` unless it already holds it; False to retry."""
        assert self._tables is not None
        current = self._entries.get(key)
        if current is not None and current.value == value:
            return True
        try:
            revision = await self._tables.put(key, value, last=current.revision if current else 0)
        except Conflict:
            # Our view of the bucket is behind (a stalled watch): read the key and retry.
            with contextlib.suppress(Unavailable):
                fresh = await self._tables.get(key)
                self._entries[key] = fresh or Entry(key, None, 0)
            return False
        except Unavailable as exc:
            log.warning("write of %s failed: %s", key, exc)
            return False
        self._entries[key] = Entry(key, value, revision)
        return True

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry.expiry / 4)
            self._dirty |= self.registry.expire(time.monotonic())
            self._clients.expire(time.monotonic())

    async def _scan_loop(self) -> None:
        while True:
            await self._scan_once(timeout=1.0)
            await asyncio.sleep(self._scan_interval)

    async def _scan_once(self, *, timeout: float) -> None:
        assert self._nc is not None
        infos = await _discovery.gather(self._nc, "INFO", _micro.Info, timeout=timeout)
        now = time.monotonic()
        for info in infos:
            with contextlib.suppress(pydantic.ValidationError, ValueError):
                self._dirty |= self.registry.announce(from_info(info), now)

    # -- requests (leader only) --------------------------------------------------------------

    async def _on_apply(self, msg: Msg) -> None:
        allow_empty = (msg.headers or {}).get(_control.ALLOW_EMPTY) == "1"
        reply = await self.apply(msg.data, allow_empty=allow_empty)
        if msg.reply:
            await msg.respond(reply.model_dump_json().encode())

    async def apply(self, data: bytes, *, allow_empty: bool = False) -> ApplyReply:
        """Validate a route file and write the tables that changed; never raises.

        A config that names services, subsets or HTTP targets no live instance
        serves is refused with those warnings, unless ``allow_empty``.
        """
        from natsmesh.traffic._routes import RouteConfigError, parse_routes

        try:
            config = parse_routes(data)
        except RouteConfigError as exc:
            problems = tuple({"path": p.path, "reason": p.reason} for p in exc.problems)
            return ApplyReply(ok=False, problems=problems, error="invalid route config")
        warnings = await self._empty_targets(config, scan=not allow_empty)
        if warnings and not allow_empty:
            return ApplyReply(
                ok=False,
                warnings=warnings,
                error="nothing live serves some of what the config names; fix it, or apply"
                " it anyway with --allow-empty",
            )
        wanted: dict[str, bytes] = {
            routes_key(name): RouteTable(service=name, policy=policy.model_dump(mode="json"))
            .model_dump_json()
            .encode()
            for name, policy in config.services.items()
        }
        wanted[_control.HTTP_KEY] = (
            HttpTable(routes=tuple(r.model_dump(mode="json") for r in config.http))
            .model_dump_json()
            .encode()
        )
        revisions, unchanged = {}, []
        for key, value in sorted(wanted.items()):
            before = self._entries.get(key)
            if before is not None and before.value == value:
                unchanged.append(key)
                continue
            if not await self._write(key, value) and not await self._write(key, value):
                return ApplyReply(ok=False, error=f"could not write {key}; nothing else changed")
            revisions[key] = self._entries[key].revision
        assert self._tables is not None
        for key, entry in list(self._entries.items()):
            if key.startswith("routes.") and key not in wanted and entry.value is not None:
                await self._tables.delete(key)
                self._entries[key] = Entry(key, None, entry.revision)
        return ApplyReply(
            ok=True, revisions=revisions, unchanged=tuple(unchanged), warnings=warnings
        )

    async def _empty_targets(
        self, config: RouteConfig, *, scan: bool
    ) -> tuple[dict[str, str], ...]:
        """What ``config`` names that no live instance serves, as ``path: reason`` rows.

        The registry may lag (this controller just started, an instance just came
        up): before refusing, one ``$SRV.INFO`` scan (with ``scan``) brings it up to date.
        """
        for again in (False, True) if scan else (False,):
            if again:
                await self._scan_once(timeout=1.0)
            live = {s: Live.of(self.registry.instances(s)) for s in self.registry.services()}
            found = empty_targets(config, {s: v for s, v in live.items() if v.subsets})
            if not found:
                return ()
        return tuple({"path": p.path, "reason": p.reason} for p in found)

    async def _on_status_show(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(self.status().model_dump_json().encode())

    def status(self) -> StatusView:
        """Every reporting client's applied revisions against the latest, per service,
        and the schema conflicts among the instances of every service.
        """
        conflicts = [c for s in sorted(self._conflicts) for c in self._conflicts[s]]
        return self._clients.view(self._revision, time.monotonic(), conflicts)

    def _revision(self, key: str) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.revision


def _where(conflict: SchemaConflict) -> tuple[str, str, str, str]:
    return (conflict.service, conflict.subset, conflict.endpoint, conflict.part)


def from_info(info: _micro.Info) -> Announcement:
    """The registry's view of an instance seen through ``$SRV.INFO``."""
    subset = info.metadata.get(_micro.SUBSET_KEY) or default_subset(info.version or "0.0.0")
    return Announcement(
        service=info.name,
        id=info.id,
        version=info.version[:64],
        subset=subset,
        endpoints=tuple(
            EndpointEntry(
                name=e.name[:64],
                subject=e.subject[:256],
                idempotent=e.metadata.get("natsmesh.idempotent") == "true",
                request_schema=_schema(e.metadata.get("natsmesh.request_schema", "")),
                response_schema=_schema(e.metadata.get("natsmesh.response_schema", "")),
            )
            for e in info.endpoints[:256]
        ),
        metadata=dict(list(info.metadata.items())[:64]),
        zone=info.metadata.get("natsmesh.zone", ""),
        mesh=info.is_mesh,
    )


def _schema(text: str) -> str:
    # Foreign services may send anything here: keep it only if it fits the table.
    return text if len(text) <= 64 * 1024 else ""
