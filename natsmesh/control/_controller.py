"""The controller: registry and route tables, kept in JetStream KV and pushed to callers.

Every controller listens (announcements, heartbeats, leaves, reports, a watch on
the whole bucket), so a standby is always ready; only the holder of the lease
(:mod:`._lease`) writes, and every write is a compare-and-swap (:mod:`._store`).
The bucket republishes each write on ``<prefix>._ctl.table.<key>``, which is
how callers follow the tables without a JetStream consumer of their own.

The parts, each with one job:

- :mod:`._members`: the registry's inputs, trusted by subject, never by body;
- :mod:`._ejection`: queue-mode outlier reports and eject commands;
- :mod:`._route_apply`: ``routes.apply`` and ``routes.show``;
- this module: the lifecycle and the loops, in one anyio task group that the
  controller's ``async with`` owns (enter and exit it in the same task).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import anyio
import pydantic
from anyio.abc import TaskGroup

from natsmesh.control._ejection import Ejection
from natsmesh.control._ejector import Ejector
from natsmesh.control._lease import LeaseKeeper
from natsmesh.control._members import Members, from_info, status_of
from natsmesh.control._registry import Registry, schema_conflicts
from natsmesh.control._route_apply import RouteApply
from natsmesh.control._status import Clients
from natsmesh.control._store import Store
from natsmesh.traffic._route_warnings import Live, empty_targets
from natsmesh.traffic._routes import RouteConfig
from natsmesh.transport._kv import Tables, Unavailable
from natsmesh.transport._link import Link, Subscription
from natsmesh.transport._transport import Msg, new_id
from natsmesh.wire import _control
from natsmesh.wire._control import (
    ApplyReply,
    RegistryTable,
    SchemaConflict,
    StatusView,
    control_subject,
    instance_subject,
    outlier_subject,
    registry_key,
    status_subject,
)

__all__ = ["Controller", "from_info"]

log = logging.getLogger("natsmesh.controller")
#: The answer to an apply cut short: leadership lost, or the controller stopping.
STOPPED_APPLYING: Final = (
    ApplyReply(
        ok=False,
        error="the controller stopped leading while applying: tables written before that stay,"
        " the rest were not; apply again",
    )
    .model_dump_json()
    .encode()
)

if TYPE_CHECKING:  # a connection the caller owns, wrapped in a Link
    from natsmesh.transport._transport import NATS

Handler = Callable[[Msg], Awaitable[None]]


class Controller:
    """One controller process's worth of control plane. Use as an async context manager.

    ``admitted``: the foreign (non-natsmesh) micro services an access policy names;
    None (no policy known) admits every one a ``$SRV`` scan finds.
    """

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
        admitted: Collection[str] | None = None,
    ) -> None:
        self.id = controller_id or new_id()
        self._nats = nats
        self._prefix = prefix
        self._lease_period = lease
        self._scan_interval = scan_interval
        self._replicas = replicas
        self._admitted = admitted
        self.registry = Registry(expiry=expiry, foreign_expiry=2.5 * scan_interval)
        self._clients = Clients(ttl=status_ttl)
        self._conflicts: dict[str, list[SchemaConflict]] = {}
        self._link: Link | None = None
        self._tg: TaskGroup | None = None
        self._leader_subs: list[Subscription] = []
        self.leader_changed = anyio.Event()
        # Set in __aenter__ (they need the connection and the bucket).
        self._store: Store
        self._members: Members
        self._ejection: Ejection
        self._routes: RouteApply
        self._lease: LeaseKeeper

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._link = await Link.open(self._nats, name=f"natsmesh-controller/{self.id}")
        try:
            await self._start(self._link)
        except BaseException:
            await self._close(None, None, None)
            raise
        return self

    async def _start(self, link: Link) -> None:
        tables = await Tables.open(link, create=True, replicas=self._replicas, prefix=self._prefix)
        self._store = Store(tables)
        self._members = Members(link, self.registry, admitted=self._admitted)
        self._ejection = Ejection(link, self._members, self._store, prefix=self._prefix)
        self._routes = RouteApply(self._store, self._empty_targets)
        self._lease = LeaseKeeper(
            tables, self.id, period=self._lease_period, on_change=self._set_leader
        )
        await self._seed()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._store.watch)
        handlers: list[tuple[str, Handler]] = [
            (instance_subject(self._prefix, "announce", "*"), self._members.on_announce),
            (instance_subject(self._prefix, "heartbeat", "*"), self._on_heartbeat),
            (instance_subject(self._prefix, "leave", "*"), self._members.on_leave),
            (outlier_subject(self._prefix, "*", "*"), self._on_outlier),
            (status_subject(self._prefix, "*"), self._on_status),
        ]
        for subject, handler in handlers:
            await link.subscribe(subject, cb=handler)
        for loop in (self._lease.run, self._write_loop, self._expire_loop, self._scan_loop):
            self._tg.start_soon(loop)
        await link.flush()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close(et, exc, tb)

    async def _close(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
                tg, self._tg = self._tg, None
                await tg.__aexit__(et, exc, tb)
        finally:
            if hasattr(self, "_lease"):
                with anyio.CancelScope(shield=True):
                    await self._lease.hand_over()
            if self._link is not None and self._link.owned:
                await self._link.close()

    async def _seed(self) -> None:
        """Start from the stored registry tables (a new leader keeps what the last knew)."""
        now = time.monotonic()
        try:
            keys = await self._store.tables.keys("registry.")
            for key in keys:
                entry = await self._store.tables.get(key)
                if entry is None or entry.value is None:
                    continue
                self._store.entries[key] = entry
                try:
                    self.registry.seed(RegistryTable.model_validate_json(entry.value), now)
                except pydantic.ValidationError as exc:
                    log.warning("%s holds no valid table, not seeded: %s", key, exc)
        except Unavailable as exc:
            # Not fatal: announcements and heartbeats rebuild the registry within an expiry.
            log.warning("could not read the stored registry (starting empty): %s", exc)

    # -- views -------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return hasattr(self, "_lease") and self._lease.is_leader

    @property
    def ejector(self) -> Ejector:
        return self._ejection.ejector

    # -- inputs ------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        wanted = self._members.on_heartbeat(msg)
        if wanted is not None and self._tg is not None:
            # Alive but not known (it announced before this controller started): ask it.
            self._tg.start_soon(self._members.fetch, *wanted)

    async def _on_outlier(self, msg: Msg) -> None:
        await self._ejection.on_report(msg, leader=self.is_leader)

    async def _on_status(self, msg: Msg) -> None:
        report = status_of(msg, self._members.reject)
        if report is not None:
            self._clients.report(report, time.monotonic())

    # -- leadership --------------------------------------------------------------------

    async def _set_leader(self, leader: bool) -> None:
        assert self._link is not None
        if leader:
            handlers: dict[str, Handler] = {
                "routes.apply": self._on_apply,
                "routes.show": self._on_routes_show,
                "status.show": self._on_status_show,
            }
            for name, handler in handlers.items():
                subject = control_subject(self._prefix, name)
                self._leader_subs.append(await self._link.subscribe(subject, cb=handler))
            self._members.dirty |= set(self.registry.services())
        else:
            subs, self._leader_subs = self._leader_subs, []
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # the connection is closing: it took them along
                    log.info("dropping a leader subscription: %r", exc)
        self.leader_changed.set()
        self.leader_changed = anyio.Event()

    # -- loops -------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await anyio.sleep(0.02)
            if not self.is_leader or not self._members.dirty:
                continue
            for service in sorted(self._members.take_dirty()):
                self._check_schemas(service)
                table = self.registry.table(service).model_dump_json().encode()
                if not await self._store.write(registry_key(service), table):
                    self._members.dirty.add(service)

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

    async def _expire_loop(self) -> None:
        while True:
            await anyio.sleep(self.registry.expiry / 4)
            self._members.expire()
            self._clients.expire(time.monotonic())

    async def _scan_loop(self) -> None:
        while True:
            await self._members.scan(timeout=1.0)
            await anyio.sleep(self._scan_interval)

    # -- requests (leader only) --------------------------------------------------------

    async def _on_apply(self, msg: Msg) -> None:
        allow_empty = (msg.headers or {}).get(_control.ALLOW_EMPTY) == "1"
        try:
            reply = await self.apply(msg.data, allow_empty=allow_empty)
        except anyio.get_cancelled_exc_class():
            # This controller stopped leading (its subscription is dropped, which cancels
            # the handler) or stops: the caller gets an answer, not a timeout.
            if msg.reply:
                with anyio.CancelScope(shield=True):
                    await self._answer_safely(msg, STOPPED_APPLYING)
            raise
        if msg.reply:
            await self._answer(msg, reply.model_dump_json().encode())

    async def apply(self, data: bytes, *, allow_empty: bool = False) -> ApplyReply:
        """Validate a route file and write the tables that changed; never raises
        (see :class:`~natsmesh.control._route_apply.RouteApply`)."""
        return await self._routes.apply(data, allow_empty=allow_empty)

    async def _empty_targets(self, config: RouteConfig, scan: bool) -> tuple[dict[str, str], ...]:
        """What ``config`` names that no live instance serves, as ``path: reason`` rows.

        The registry may lag (this controller just started, an instance just came
        up): before refusing, one ``$SRV.INFO`` scan (with ``scan``) brings it up to date.
        """
        for again in (False, True) if scan else (False,):
            if again:
                await self._members.lookup(sorted(config.services), timeout=1.0)
            live = {s: Live.of(self.registry.instances(s)) for s in self.registry.services()}
            found = empty_targets(config, {s: v for s, v in live.items() if v.subsets})
            if not found:
                return ()
        return tuple({"path": p.path, "reason": p.reason} for p in found)

    async def _on_routes_show(self, msg: Msg) -> None:
        if msg.reply:
            await self._answer(msg, self._routes.show(msg.data))

    async def _on_status_show(self, msg: Msg) -> None:
        if msg.reply:
            await self._answer(msg, self.status().model_dump_json().encode())

    async def _answer(self, msg: Msg, data: bytes) -> None:
        assert self._link is not None  # requests come once it is connected
        await self._link.publish(msg.reply, data)

    async def _answer_safely(self, msg: Msg, data: bytes) -> None:
        try:
            await self._answer(msg, data)
        except Exception as exc:  # the connection is closing: the caller times out
            log.info("answering %s failed: %r", msg.subject, exc)

    def status(self) -> StatusView:
        """Every reporting client's applied revisions against the latest, per service,
        and the schema conflicts among the instances of every service.
        """
        conflicts = [c for s in sorted(self._conflicts) for c in self._conflicts[s]]
        return self._clients.view(self._store.revision, time.monotonic(), conflicts)


def _where(conflict: SchemaConflict) -> tuple[str, str, str, str]:
    return (conflict.service, conflict.subset, conflict.endpoint, conflict.part)
