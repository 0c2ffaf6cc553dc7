"""An instance's queue-group subscriptions, which the controller may suspend for a while.

In queue mode callers cannot avoid a bad instance: NATS picks it. When enough
callers report it, the controller sends an :class:`~natsmesh.wire._control.EjectCommand`
on ``<prefix>._ctl.eject.<service>.<id>`` (only the controller may publish there,
see ``_policy_auth``). The instance then leaves every queue group it is in, but
keeps its per-instance subjects and ``$SRV``, so it stays observable and callers
that pick instances can still reach it; it says it is unhealthy in its
heartbeats, and after the command's period it joins again. A controller that
keeps hearing reports can eject it again, for longer.

Leaving drains each queue subscription (unsubscribe, then dispatch what the
server already delivered), so no request that reached the instance is dropped.
One loop (:meth:`QueueMembership.run`, in the runner's task group) makes every
change, so a command that arrives while the instance leaves or rejoins only
moves the time it rejoins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import pydantic

from natsmesh.transport._link import Link, Subscription
from natsmesh.transport._transport import Msg
from natsmesh.wire._control import MAX_CONTROL_MESSAGE, EjectCommand, eject_subject

log = logging.getLogger("natsmesh.service")

Deliver = Callable[[Msg], None]  # called as each message is read: see subscribe_direct
# A leave or a rejoin runs to its end even when the runner closes meanwhile (the
# subscriptions are in one list or the other), within this bound.
_CHANGE_WITHIN = 5.0
_RETRY_REJOIN = 1.0


class QueueMembership:
    """The queue subscriptions of one instance: joined, or out until a time."""

    def __init__(
        self,
        link: Link,
        *,
        prefix: str,
        service: str,
        instance_id: str,
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self._link = link
        self._service = service
        self._id = instance_id
        self._subject = eject_subject(prefix, service, instance_id)
        self._on_change = on_change
        self._wanted: list[tuple[str, str, Deliver]] = []
        self.subscriptions: list[Subscription] = []
        self.healthy = True
        self.ejections = 0
        self.rejoins = 0
        self._out_until: float | None = None  # time.monotonic() to rejoin at, once asked
        self._seconds = 0.0
        self._wake = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    async def join(self, subject: str, queue: str, deliver: Deliver) -> None:
        """Subscribe to ``subject`` in queue group ``queue``, now and after every ejection."""
        self._wanted.append((subject, queue, deliver))
        self.subscriptions.append(await self._subscribe(subject, queue, deliver))

    async def _subscribe(self, subject: str, queue: str, deliver: Deliver) -> Subscription:
        return await self._link.subscribe_direct(subject, deliver, queue=queue)

    def stats(self) -> dict[str, int]:
        return {
            "queue_ejections": self.ejections,
            "queue_rejoins": self.rejoins,
            "queue_ejected": int(not self.healthy),
        }

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Take the controller's eject commands and carry them out, until :meth:`close`.

        Started with ``task_group.start()``: ready once the command subject is
        subscribed (live after the runner's next flush).
        """
        try:
            with anyio.CancelScope() as self._scope:
                commands = await self._link.subscribe(self._subject, cb=self._on_eject)
                try:
                    task_status.started()
                    await self._follow()
                finally:
                    with anyio.CancelScope(shield=True):
                        await _unsubscribe(commands)
        finally:
            self._stopped.set()

    async def _follow(self) -> None:
        while True:
            wake = self._wake = anyio.Event()
            until = self._out_until
            if until is None:
                await wake.wait()
            elif self.healthy:
                await self._leave()
            else:
                with anyio.move_on_after(until - time.monotonic()):
                    await wake.wait()
                    continue  # another command: it moved the time to rejoin
                self._out_until = None
                await self._rejoin()

    async def _on_eject(self, msg: Msg) -> None:
        if len(msg.data) > MAX_CONTROL_MESSAGE:
            log.warning("%s/%s: ignored an oversized eject command", self._service, self._id)
            return
        try:
            command = EjectCommand.model_validate_json(msg.data)
        except pydantic.ValidationError:
            log.warning("%s/%s: ignored an invalid eject command", self._service, self._id)
            return
        if (command.service, command.id) != (self._service, self._id):
            return  # the subject names us; a body naming another instance is not ours
        self.leave(command.seconds)

    def leave(self, seconds: float) -> None:
        """Leave every queue group for ``seconds`` (from now, if already out)."""
        if self._scope is None or self._scope.cancel_called:
            return  # not following commands (not started, or draining)
        self._seconds = seconds
        self._out_until = time.monotonic() + seconds
        self._wake.set()

    async def _leave(self) -> None:
        log.warning(
            "%s/%s: leaving the queue groups for %.1f s, as the controller asks",
            self._service,
            self._id,
            self._seconds,
        )
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CHANGE_WITHIN):
            while self.subscriptions:
                try:
                    await self.subscriptions[-1].drain()
                except Exception as exc:  # a closing connection: the subscription goes with it
                    log.warning("%s/%s: a queue subscription did not drain: %s", *self._me, exc)
                self.subscriptions.pop()
            self.healthy = False
            self.ejections += 1
        await self._changed()

    async def _rejoin(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CHANGE_WITHIN):
            try:
                for subject, queue, deliver in self._wanted[len(self.subscriptions) :]:
                    self.subscriptions.append(await self._subscribe(subject, queue, deliver))
                await self._link.flush()
            except Exception as exc:  # a connection that is away: tried again below
                log.warning("%s/%s: rejoining the queue groups failed: %s", *self._me, exc)
            else:
                self.healthy = True
                self.rejoins += 1
                log.info("%s/%s: back in the queue groups", *self._me)
        if not self.healthy:
            if self._out_until is None:  # no newer command: try again a little later
                self._out_until = time.monotonic() + _RETRY_REJOIN
            return
        await self._changed()

    @property
    def _me(self) -> tuple[str, str]:
        return self._service, self._id

    async def _changed(self) -> None:
        try:
            await self._on_change()
        except Exception as exc:  # a reconnecting client: the next heartbeat tells
            log.warning("%s/%s: heartbeat after a change not sent: %s", *self._me, exc)

    async def close(self) -> list[Subscription]:
        """Stop following commands (the instance drains); returns the queue subscriptions."""
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()
        return list(self.subscriptions)


async def _unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception as exc:  # a closed connection took it already
        log.debug("unsubscribing %s: %s", sub.subject, exc)
