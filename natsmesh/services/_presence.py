"""How a running instance makes itself known: announce, heartbeats, leave, ``$SRV`` answers.

The controller learns of an instance from its announcement, keeps it while its
heartbeats arrive (they also say whether it is out of its queue groups) and
drops it on its leave. Every instance also answers the NATS Services API
(``$SRV.PING``, ``INFO``, ``STATS``: bare, by name, by name and id) on plain
subscriptions, so ``nats micro ls`` and other languages' clients see it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import anyio.abc
import pydantic

from natsmesh.services._describe import EndpointState, Instance, announcement, info, ping, stats
from natsmesh.services._membership import QueueMembership
from natsmesh.services._spec import ServiceSpec
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Msg
from natsmesh.wire import _micro
from natsmesh.wire._control import Announcement, Heartbeat, Leave, instance_subject
from natsmesh.wire._subjects import srv_subjects

log = logging.getLogger("natsmesh.service")


class _Subscription(Protocol):
    @property
    def subject(self) -> str: ...

    async def unsubscribe(self) -> None: ...


class Presence:
    """One instance's messages to the control plane and its ``$SRV`` answers."""

    def __init__(
        self,
        link: Link,
        instance: Instance,
        *,
        endpoints: Sequence[EndpointState],
        queues: QueueMembership,
        in_flight: Callable[[], int],
        interval: float,
    ) -> None:
        self._link = link
        self.instance = instance
        self._endpoints = endpoints
        self._queues = queues
        self._in_flight = in_flight
        self._interval = interval
        self._srv: list[_Subscription] = []
        self._beating: anyio.CancelScope | None = None
        self._failing = False

    @property
    def _spec(self) -> ServiceSpec:
        return self.instance.spec

    # -- what it says about itself ---------------------------------------------------

    def announcement(self) -> Announcement:
        return announcement(self.instance)

    def info(self) -> _micro.Info:
        return info(self.instance, self._endpoints)

    def stats(self) -> _micro.Stats:
        return stats(
            self.instance, self._endpoints, in_flight=self._in_flight(), queue=self._queues.stats()
        )

    # -- the control plane --------------------------------------------------------------

    async def announce(self) -> None:
        await self._publish("announce", self.announcement())

    def stop(self) -> None:
        """Stop the heartbeats."""
        if self._beating is not None:
            self._beating.cancel()

    async def leave(self) -> None:
        """Stop the heartbeats and tell the controller this instance is gone."""
        self.stop()
        await self._publish("leave", Leave(service=self._spec.name, id=self.instance.id))

    async def beat(self) -> None:
        # Unhealthy while out of the queue groups: callers that pick instances skip it too.
        healthy = self._queues.healthy
        await self._publish(
            "heartbeat", Heartbeat(service=self._spec.name, id=self.instance.id, healthy=healthy)
        )

    async def heartbeats(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Send a heartbeat every interval until :meth:`leave` (or the task group ends)."""
        with anyio.CancelScope() as self._beating:
            task_status.started()
            while True:
                await anyio.sleep(self._interval)
                try:
                    await self.beat()
                except Exception as exc:  # a reconnecting client buffers or drops: say so once
                    level = logging.DEBUG if self._failing else logging.WARNING
                    log.log(level, "%s/%s: heartbeat not sent: %s", *self._me, exc)
                    self._failing = True
                else:
                    self._failing = False

    @property
    def _me(self) -> tuple[str, str]:
        return self._spec.name, self.instance.id

    async def _publish(self, name: str, message: pydantic.BaseModel) -> None:
        subject = instance_subject(self.instance.subjects.prefix, name, self._spec.name)
        await self._link.publish(subject, message.model_dump_json().encode())

    # -- the NATS Services API -------------------------------------------------------------

    async def answer_srv(self) -> None:
        """Subscribe to every ``$SRV`` subject of this instance (live after a flush)."""
        answers: dict[str, Callable[[], bytes]] = {
            "PING": lambda: _micro.dump(ping(self.instance)),
            "INFO": lambda: _micro.dump(self.info()),
            "STATS": lambda: _micro.dump(self.stats()),
        }
        for verb, answer in answers.items():
            for subject in srv_subjects(verb, self._spec.name, self.instance.id):
                callback = functools.partial(_on_srv, self._link, answer)
                self._srv.append(await self._link.subscribe(subject, cb=callback))

    async def close(self) -> None:
        """Stop answering ``$SRV`` (on a connection that outlives the instance)."""
        subs, self._srv = self._srv, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a closed connection took it already
                log.debug("%s/%s: unsubscribing %s: %s", *self._me, sub.subject, exc)


async def _on_srv(link: Link, answer: Callable[[], bytes], msg: Msg) -> None:
    if msg.reply:
        await link.publish(msg.reply, answer())
