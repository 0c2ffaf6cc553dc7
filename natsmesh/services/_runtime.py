"""Run one instance of a ``@service``: the lifecycle shell (start, drain, stop).

Every endpoint listens on three subjects (see ``_subjects``): the service's
queue group, its subset's queue group (both in :mod:`._membership`, which the
controller may suspend), and a plain per-instance subject. The request path is
:mod:`._dispatch`; what the instance says about itself (announcement,
heartbeats, ``$SRV``) is :mod:`._presence`. The runner starts them in order,
owns their background tasks in one anyio task group, and on leaving drains and
undoes what it did, in reverse.
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio

from natsmesh.client._client import Mesh, on_link
from natsmesh.observe._hooks import ServeObserver
from natsmesh.services import _describe
from natsmesh.services._describe import EndpointState, Instance
from natsmesh.services._dispatch import DEFAULT_BUDGET, Dispatcher
from natsmesh.services._error_replies import ErrorReplies
from natsmesh.services._membership import QueueMembership
from natsmesh.services._presence import Presence
from natsmesh.services._spec import ServiceSpec, spec_of
from natsmesh.transport._link import Link, Subscription
from natsmesh.transport._tasks import Nesting
from natsmesh.transport._transport import new_id
from natsmesh.wire import _codec, _micro
from natsmesh.wire._codec import Limits
from natsmesh.wire._control import IDENTITY_INBOX, Announcement
from natsmesh.wire._subjects import Subjects

if TYPE_CHECKING:  # a connection the caller owns, wrapped in a Link
    from natsmesh.transport._transport import NATS

__all__ = ["DEFAULT_BUDGET", "ServiceRunner"]

log = logging.getLogger("natsmesh.service")


class ServiceRunner:
    """Runs one instance of a ``@service`` class (or instance) on NATS.

    Use as ``async with ServiceRunner(Shop(), nats=url) as runner: ...``; leaving
    the block drains: it stops taking requests, finishes those in flight (up to
    ``drain_timeout``), and leaves. An object that is itself an async context
    manager is entered before the first request and exited after the last.

    The runner's background work (heartbeats, the controller's eject commands,
    abandoning requests whose budget ended) runs in an anyio task group that it
    opens on entry and closes on exit: enter and exit it in the same task, in
    the order of the ``async with`` blocks (an ``AsyncExitStack`` keeps it).

    ``nats`` is a server URL (default: ``NATS_URL``, then ``nats://127.0.0.1:4222``;
    several servers comma-separated) or a connection the caller owns.
    """

    def __init__(
        self,
        target: object,
        *,
        nats: str | NATS | None = None,
        prefix: str = "mesh",
        instance_id: str | None = None,
        limits: Limits = _codec.DEFAULT_LIMITS,
        max_concurrency: int | None = None,
        drain_timeout: float = 30.0,
        heartbeat: float = 2.0,
        zone: str | None = None,
    ) -> None:
        self.spec: ServiceSpec = spec_of(target)
        self._target = target() if isinstance(target, type) else target
        self._nats = nats
        self._subjects = Subjects(prefix)
        self.id = instance_id or new_id()
        self._limits = limits
        self._max_concurrency = max_concurrency or self.spec.max_concurrency
        self._drain_timeout = drain_timeout
        self._heartbeat = heartbeat
        self._zone = zone if zone is not None else os.environ.get("NATSMESH_ZONE")
        self._link: Link | None = None
        self._stack = AsyncExitStack()
        self._nesting = Nesting(f"ServiceRunner {self.spec.name}/{self.id}")
        self._entered = False
        self._endpoints: list[EndpointState] = []
        self._request_subs: list[Subscription] = []  # the per-instance ones
        self._queues: QueueMembership | None = None  # the queue-group ones, set on entry
        self._dispatch: Dispatcher | None = None
        self._presence: Presence | None = None
        self._draining = False
        self.started = datetime.now(UTC)

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"{self.spec.name}/{self.id}: a ServiceRunner runs once")
        self._entered = True
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        self._nesting.enter()
        log.info(
            "%s %s (%s) serving as %s", self.spec.name, self.spec.version, self.spec.subset, self.id
        )
        return self

    async def _start(self, stack: AsyncExitStack) -> None:
        """Everything __aenter__ does, each step undone by ``stack`` (in reverse)."""
        link = self._link = await self._connect(stack)
        name = f"{self.spec.name}/{self.id}"
        mesh = Mesh(name=name, prefix=self._subjects.prefix, kind="service", zone=self._zone)
        on_link(mesh, link)
        await stack.enter_async_context(mesh)
        if hasattr(self._target, "__aenter__"):
            await stack.enter_async_context(self._target)  # type: ignore[arg-type]
        if self._zone is None:
            self._zone = link.zone
        observer = ServeObserver()
        await observer.start(
            link, prefix=self._subjects.prefix, service=self.spec.name, instance=self.id
        )
        stack.push_async_callback(observer.stop)
        replies = link.requester()
        errors = ErrorReplies(
            replies, service=self.spec.name, instance_id=self.id, record=observer.failed
        )
        dispatch = self._dispatch = Dispatcher(
            replies,
            errors,
            service=self.spec.name,
            limits=self._limits,
            max_concurrency=self._max_concurrency,
            mesh=mesh,
            observer=observer,
        )
        queues = self._queues = QueueMembership(
            link, prefix=self._subjects.prefix, service=self.spec.name, instance_id=self.id,
            on_change=self._beat,
        )  # fmt: skip
        presence = self._presence = Presence(
            link, self._instance(), endpoints=self._endpoints, queues=queues,
            in_flight=lambda: dispatch.in_flight, interval=self._heartbeat,
        )  # fmt: skip
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.push_async_callback(self._stop_background)  # before the group waits for them
        await stack.enter_async_context(dispatch.running())
        stack.push_async_callback(presence.close)
        await presence.answer_srv()
        stack.push_async_callback(self._forget_subscriptions)
        await self._subscribe_endpoints(link, queues, dispatch)
        await tasks.start(queues.run)
        # The subscriptions are only live once the server has processed them.
        await link.flush()
        await presence.announce()
        await tasks.start(presence.heartbeats)

    async def _connect(self, stack: AsyncExitStack) -> Link:
        link = await Link.open(self._nats, name=f"{self.spec.name}/{self.id}")
        # Flushed, not drained: the subscriptions are drained already, by drain().
        stack.push_async_callback(functools.partial(link.release, drain=False))
        return link

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._nesting.exit()  # out of order or from another task: a RuntimeError, and no harm
        try:
            await self.drain()
        finally:
            await self._stack.aclose()

    async def drain(self) -> None:
        """Stop taking requests and wait (up to ``drain_timeout``) for those in flight."""
        if self._draining:
            return
        self._draining = True
        log.info("%s/%s: draining", self.spec.name, self.id)
        # No ejection ends, and none starts, once draining: the queue groups are left for good.
        queued = await self._queues.close() if self._queues is not None else []
        link = self._link
        if link is not None and link.is_connected and self._presence is not None:
            # Leave the registry first: callers that pick instances stop picking this one.
            try:
                await self._presence.leave()
            except Exception as exc:  # the connection went meanwhile: its heartbeats stop too
                log.warning("%s/%s: leave not sent: %s", self.spec.name, self.id, exc)
        if link is not None and link.is_connected:
            # drain() unsubscribes, then waits until the messages already delivered
            # to this client have been dispatched, so none is lost in the switch.
            with anyio.move_on_after(self._drain_timeout):
                for sub in [*queued, *self._request_subs]:
                    await sub.drain()
        if self._dispatch is not None:
            await self._dispatch.finish(self._drain_timeout)

    async def _stop_background(self) -> None:
        # Each task through its own scope, never the group's (see _tasks.Nesting).
        if self._queues is not None:
            await self._queues.close()
        if self._presence is not None:
            self._presence.stop()

    async def _forget_subscriptions(self) -> None:
        if self._link is None or self._link.is_closed:
            return
        queued = self._queues.subscriptions if self._queues is not None else []
        await _unsubscribe([*queued, *self._request_subs])

    # -- the parts -----------------------------------------------------------------

    def _instance(self) -> Instance:
        return Instance(
            spec=self.spec,
            id=self.id,
            subjects=self._subjects,
            zone=self._zone or "",
            started=self.started,
        )

    async def _beat(self) -> None:
        if self._presence is not None:
            await self._presence.beat()

    async def _subscribe_endpoints(
        self, link: Link, queues: QueueMembership, dispatch: Dispatcher
    ) -> None:
        name, subset, s = self.spec.name, self.spec.subset, self._subjects
        named = Subjects.caller_suffix("*")
        dispatch.secured = link.new_inbox().startswith(IDENTITY_INBOX)
        for spec in self.spec.endpoints:
            handler = getattr(self._target, spec.attribute)
            ep = EndpointState(spec, handler, s.endpoint(name, spec.name))
            self._endpoints.append(ep)
            deliver = functools.partial(dispatch.on_request, ep)
            await queues.join(ep.subject, s.queue_group(name), deliver)
            subset_subject = s.subset(name, subset, spec.name)
            await queues.join(subset_subject, s.queue_group(name, subset), deliver)
            own = s.instance(name, self.id, spec.name)
            self._request_subs.append(await link.subscribe_direct(own, deliver))
            # The same subjects with the caller named in them (Context.caller); under a
            # policy only that identity may publish such a subject, so the name is vouched.
            await queues.join(ep.subject + named, s.queue_group(name), deliver)
            await queues.join(subset_subject + named, s.queue_group(name, subset), deliver)
            self._request_subs.append(await link.subscribe_direct(own + named, deliver))

    # -- what it says about itself ---------------------------------------------------

    def announcement(self) -> Announcement:
        """What this instance tells the controller about itself."""
        return _describe.announcement(self._instance())

    def info(self) -> _micro.Info:
        """Its ``$SRV.INFO`` answer."""
        return _describe.info(self._instance(), self._endpoints)

    def stats(self) -> _micro.Stats:
        """Its ``$SRV.STATS`` answer."""
        if self._presence is not None:
            return self._presence.stats()
        return _describe.stats(self._instance(), self._endpoints, in_flight=0, queue=None)


async def _unsubscribe(subs: list[Subscription]) -> None:
    """Unsubscribe what drain() did not (a start that failed half-way, a drain cut short)."""
    with anyio.CancelScope(shield=True):
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # drained already, or the connection is gone
                log.debug("unsubscribing %s: %s", sub.subject, exc)
