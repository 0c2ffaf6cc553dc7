"""The observer: asks the mesh for summaries, adds them up, and keeps the instances' state.

One :class:`Observer` per dashboard (or ``natsmesh observe``) process. While it runs
it publishes interest every :data:`REPORT_EVERY` seconds, takes every caller's
summary (the sender is the subject's token; a payload that does not parse is
counted in ``rejected`` and dropped), asks ``$SRV`` INFO and STATS of every instance
on the same beat, and runs taps for whoever watches one. It is separate from the
controller on purpose: the controller is small, elected and on every mesh's
critical path; the observer holds windows and serves HTTP, and may die or lag
without any call noticing.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from natsmesh.client import _discovery
from natsmesh.client._client import Mesh, link_of
from natsmesh.traffic._aggregate import Aggregate
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Msg, NoReply, NoResponse
from natsmesh.wire import _micro
from natsmesh.wire import _observe as _wire
from natsmesh.wire._control import StatusView, control_subject

log = logging.getLogger("natsmesh.observe")

#: How many samples a tap watcher may fall behind before samples are dropped for it.
TAP_BACKLOG = 256
#: Failed requests kept per service, and services kept (the least recently failed go first).
FAILURES_KEPT = 50
FAILING_SERVICES_KEPT = 512


class RecentFailures:
    """The last failed requests of each service, as its instances reported them."""

    def __init__(self) -> None:
        self._by_service: OrderedDict[str, deque[tuple[str, int, dict[str, Any]]]] = OrderedDict()

    def add(self, service: str, instance: str, batch: list[_wire.Failure]) -> None:
        kept = self._by_service.pop(service, None)
        if kept is None:
            kept = deque(maxlen=FAILURES_KEPT)
            while len(self._by_service) >= FAILING_SERVICES_KEPT:
                self._by_service.popitem(last=False)
        self._by_service[service] = kept
        seen = {(i, seq) for i, seq, _ in kept}
        for failure in batch:
            # An instance sends again all it keeps to an observer back after a silence.
            if (instance, failure.seq) not in seen:
                kept.append((instance, failure.seq, failure.as_json(service, instance)))

    def of(self, service: str) -> list[dict[str, Any]]:
        """Newest first."""
        kept = self._by_service.get(service, ())
        return sorted((item for _, _, item in kept), key=lambda f: -f["at"])


@dataclass(slots=True)
class Instances:
    """What ``$SRV`` said on the last beat."""

    infos: list[_micro.Info] = field(default_factory=list)
    stats: dict[tuple[str, str], _micro.Stats] = field(default_factory=dict)
    at: float = 0.0


class Observer:
    """Aggregates one mesh's summaries; :meth:`run` under a task group."""

    def __init__(self, mesh: Mesh, *, prefix: str = "mesh", every: float = _wire.REPORT_EVERY):
        self.mesh = mesh
        self.prefix = prefix
        self.every = every
        self.aggregate = Aggregate()
        self.instances = Instances()
        self.rejected = 0
        self.summaries = 0
        self.failures = RecentFailures()
        self._taps: dict[str, list[MemoryObjectSendStream[dict[str, Any]]]] = {}
        self.updated = anyio.Event()  # set after each beat: live views wait for it

    @property
    def link(self) -> Link:
        return link_of(self.mesh)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        link = self.link
        metrics = await link.subscribe(_wire.metrics_wildcard(self.prefix), cb=self._on_summary)
        taps = await link.subscribe(_wire.tap_wildcard(self.prefix), cb=self._on_samples)
        failed = await link.subscribe(_wire.errors_wildcard(self.prefix), cb=self._on_failures)
        try:
            await link.flush()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._tap_interest)
                await self._beat()
                task_status.started()
                while True:
                    await anyio.sleep(self.every)
                    await self._beat()
        finally:
            with anyio.CancelScope(shield=True):
                for sub in (metrics, taps, failed):
                    try:
                        await sub.unsubscribe()
                    except Exception as exc:  # the connection is closing under us
                        log.debug("observer: unsubscribe: %s", exc)

    async def _beat(self) -> None:
        try:
            await self.link.publish(_wire.metrics_interest(self.prefix), b"")
        except Exception as exc:  # a lost connection reconnects; the next beat asks again
            log.warning("observer: cannot ask for summaries: %s", exc)
        await self._discover()
        self.aggregate.expire(time.monotonic())
        self.updated.set()
        self.updated = anyio.Event()

    async def _discover(self) -> None:
        try:
            infos = await _discovery.gather(self.link, "INFO", _micro.Info, timeout=0.5)
            stats = await _discovery.gather(self.link, "STATS", _micro.Stats, timeout=0.5)
        except Exception as exc:  # a lost connection: keep the last view, try again
            log.warning("observer: $SRV discovery failed: %s", exc)
            return
        self.instances = Instances(
            infos=infos, stats={(s.name, s.id): s for s in stats}, at=time.monotonic()
        )
        for info in infos:
            if (
                info.is_mesh
                and self.mesh._tables is not None
                and info.name not in self.mesh._tables
            ):
                await self.mesh._tables.ensure(info.name, wait=0)

    async def _on_summary(self, msg: Msg) -> None:
        try:
            sender = _wire.sender_of(msg.subject, self.prefix)
            summary = _wire.parse_summary(msg.data)
        except _wire.Rejected as exc:
            self.rejected += 1
            log.debug("observer: summary on %s rejected: %s", msg.subject[:200], exc)
            return
        self.summaries += 1
        self.aggregate.add(sender, summary, time.monotonic())

    async def _on_failures(self, msg: Msg) -> None:
        try:
            service, instance = _wire.errors_sender(msg.subject, self.prefix)
            batch = _wire.parse_failures(msg.data)
        except _wire.Rejected as exc:
            self.rejected += 1
            log.debug("observer: failures on %s rejected: %s", msg.subject[:200], exc)
            return
        self.failures.add(service, instance, batch)

    # -- taps ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def tap(self, service: str) -> AsyncIterator[Any]:
        """A stream of ``service``'s request samples (dicts) while the block runs."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](TAP_BACKLOG)
        watchers = self._taps.setdefault(service, [])
        watchers.append(send)
        await self._ask_tap(service)
        try:
            async with receive:
                yield receive
        finally:
            watchers.remove(send)
            if not watchers:
                del self._taps[service]
            send.close()

    async def _ask_tap(self, service: str) -> None:
        try:
            await self.link.publish(_wire.tap_interest(self.prefix, service), b"")
        except Exception as exc:
            log.warning("observer: cannot ask %s for its tap: %s", service, exc)

    async def _tap_interest(self) -> None:
        while True:
            for service in list(self._taps):
                await self._ask_tap(service)
            await anyio.sleep(_wire.TAP_FLUSH_EVERY)

    async def _on_samples(self, msg: Msg) -> None:
        # <prefix>._ctl.observe.samples.<service>.<id>: the subject names both.
        service, instance = msg.subject.split(".")[-2:]
        watchers = self._taps.get(service)
        if not watchers:
            return
        try:
            batch = _wire.parse_samples(msg.data)
        except _wire.Rejected as exc:
            self.rejected += 1
            log.debug("observer: tap batch on %s rejected: %s", msg.subject[:200], exc)
            return
        for sample in batch:
            item = sample.as_json(service, instance)
            for send in list(watchers):
                try:
                    send.send_nowait(item)
                except anyio.WouldBlock:
                    pass  # a slow watcher misses samples rather than holding the others
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass  # its page closed; the watcher's block removes it

    # -- the controller's view --------------------------------------------------------------

    async def status(self) -> StatusView | None:
        """Each client's sync state from the controller; None without one."""
        try:
            msg = await self.link.request(
                control_subject(self.prefix, "status.show"), b"", timeout=1.0
            )
            return StatusView.model_validate_json(msg.data)
        except (NoResponse, NoReply):
            return None
        except Exception as exc:  # a controller of another version, a refused request
            log.info("observer: no status from the controller: %s", exc)
            return None


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
