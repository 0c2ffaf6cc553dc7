"""The seam to nats-py: connecting, and turning its outcomes into natsmesh's.

Everything else speaks in subjects, bytes and headers; this module alone knows
nats-py's connect options and exception types.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Mapping
from typing import Final

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

log = logging.getLogger("natsmesh")

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
STATUS: Final = "Status"
NO_RESPONDERS: Final = "503"

__all__ = ["NATS", "Msg", "NoReply", "NoResponse", "Requester", "connect", "nats_url", "request"]


def nats_url(explicit: str | None = None) -> str:
    """The server to use: an explicit URL, else ``NATS_URL``, else the local default."""
    return explicit or os.environ.get("NATS_URL") or DEFAULT_URL


async def connect(url: str | None = None, *, name: str) -> NATS:
    """Connect with the options a long-lived mesh participant wants.

    Reconnects forever (a mesh outlives server restarts) and logs connection
    events instead of printing them. ``url`` may list several servers, comma-separated.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        log.info("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected", name)

    servers = [s.strip() for s in nats_url(url).split(",") if s.strip()]
    return await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


class NoReply(Exception):
    """No reply within the timeout."""


class NoResponse(Exception):
    """The server answered "no responders" for the subject."""


async def request(
    nc: NATS, subject: str, payload: bytes, *, timeout: float, headers: Mapping[str, str]
) -> Msg:
    """Send one request with nats-py's own request(); raises NoResponse or NoReply."""
    try:
        return await nc.request(subject, payload, timeout=timeout, headers=dict(headers))
    except NoRespondersError:
        raise NoResponse from None
    except NatsTimeoutError:
        raise NoReply from None


class Requester:
    """Request/reply multiplexed over one wildcard inbox subscription.

    The mesh's hot path. It does what ``nc.request()`` does with less work per
    call: reply tokens come from a counter rather than ``os.urandom``, and the
    timeout is one timer handle on the reply future rather than ``wait_for``.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._counter = itertools.count(1)
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._prefix = f"{self._nc.new_inbox()}."
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None and not self._nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        for future in self._pending.values():
            future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str]
    ) -> Msg:
        """Send one request; raises NoResponse or NoReply."""
        token = str(next(self._counter))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._pending.pop(token, None)
        if msg.data or not msg.headers or msg.headers.get(STATUS) != NO_RESPONDERS:
            return msg
        raise NoResponse


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(NoReply())
