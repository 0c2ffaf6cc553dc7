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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import pydantic

from natsmesh.transport._transport import NATS, Msg, Subscription, subscribe_direct
from natsmesh.wire._control import MAX_CONTROL_MESSAGE, EjectCommand, eject_subject

log = logging.getLogger("natsmesh.service")

Deliver = Callable[[Msg], None]  # called as each message is read: see subscribe_direct


class QueueMembership:
    """The queue subscriptions of one instance: joined, or out until a time."""

    def __init__(
        self,
        nc: NATS,
        *,
        prefix: str,
        service: str,
        instance_id: str,
        on_change: Callable[[], Awaitable[None]],
    ) -> None:
        self._nc = nc
        self._service = service
        self._id = instance_id
        self._subject = eject_subject(prefix, service, instance_id)
        self._on_change = on_change
        self._wanted: list[tuple[str, str, Deliver]] = []
        self.subscriptions: list[Subscription] = []
        self.healthy = True
        self.ejections = 0
        self.rejoins = 0
        self._rejoin: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    async def join(self, subject: str, queue: str, deliver: Deliver) -> None:
        """Subscribe to ``subject`` in queue group ``queue``, now and after every ejection."""
        self._wanted.append((subject, queue, deliver))
        self.subscriptions.append(await self._subscribe(subject, queue, deliver))

    async def _subscribe(self, subject: str, queue: str, deliver: Deliver) -> Subscription:
        return await subscribe_direct(self._nc, subject, deliver, queue=queue)

    async def listen(self) -> None:
        """Take eject commands from the controller."""
        await self._nc.subscribe(self._subject, cb=self._on_eject)

    def stats(self) -> dict[str, int]:
        return {
            "queue_ejections": self.ejections,
            "queue_rejoins": self.rejoins,
            "queue_ejected": int(not self.healthy),
        }

    async def _on_eject(self, msg: Msg) -> None:
        if len(msg.data) > MAX_CONTROL_MESSAGE:
            return
        try:
            command = EjectCommand.model_validate_json(msg.data)
        except pydantic.ValidationError:
            log.warning("%s/%s: ignored an invalid eject command", self._service, self._id)
            return
        if (command.service, command.id) != (self._service, self._id):
            return  # the subject names us; a body naming another instance is not ours
        await self.leave(command.seconds)

    async def leave(self, seconds: float) -> None:
        """Leave every queue group for ``seconds`` (from now, if already out)."""
        async with self._lock:
            if self._closed:
                return
            if self._rejoin is not None:
                self._rejoin.cancel()
            if self.healthy:
                log.warning(
                    "%s/%s: leaving the queue groups for %.1f s, as the controller asks",
                    self._service,
                    self._id,
                    seconds,
                )
                subs, self.subscriptions = self.subscriptions, []
                for sub in subs:
                    with contextlib.suppress(Exception):  # a closing connection
                        await sub.drain()  # type: ignore[no-untyped-call]
                self.healthy = False
                self.ejections += 1
            self._rejoin = asyncio.get_running_loop().create_task(self._after(seconds))
        await self._changed()

    async def _after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.rejoin()

    async def rejoin(self) -> None:
        """Join the queue groups again."""
        async with self._lock:
            if self._closed or self.healthy:
                return
            for subject, queue, deliver in self._wanted:
                self.subscriptions.append(await self._subscribe(subject, queue, deliver))
            await self._nc.flush()
            self.healthy = True
            self.rejoins += 1
            log.info("%s/%s: back in the queue groups", self._service, self._id)
        await self._changed()

    async def _changed(self) -> None:
        with contextlib.suppress(Exception):  # a reconnecting client: the next heartbeat tells
            await self._on_change()

    async def close(self) -> list[Subscription]:
        """Stop following commands (the instance drains); returns the queue subscriptions."""
        self._closed = True
        task, self._rejoin = self._rejoin, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return list(self.subscriptions)
