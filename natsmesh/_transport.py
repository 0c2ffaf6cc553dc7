"""The seam to nats-py: connecting, and turning its outcomes into natsmesh's.

Everything else speaks in subjects, bytes and headers; this module alone knows
nats-py's connect options and exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Mapping
from typing import Final, Self

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from natsmesh._credentials import Credentials
from natsmesh._deadlines import Deadlines

log = logging.getLogger("natsmesh")

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
STATUS: Final = "Status"
NO_RESPONDERS: Final = "503"

__all__ = ["NATS", "Msg", "NoReply", "NoResponse", "Requester", "connect", "nats_url", "request"]


def nats_url(explicit: str | None = None) -> str:
    """The server to use: an explicit URL, else ``NATS_URL``, else the local default."""
    return explicit or os.environ.get("NATS_URL") or DEFAULT_URL


async def connect(
    url: str | None = None, *, name: str, credentials: Credentials | None = None
) -> NATS:
    """Connect with the options a long-lived mesh participant wants.

    Reconnects forever (a mesh outlives server restarts) and logs connection
    events instead of printing them. ``url`` may list several servers, comma-separated.
    ``credentials`` default to the environment's (``NATS_USER``, ``NATS_CREDS``, ...);
    bad ones raise :class:`~natsmesh._credentials.CredentialsError` before connecting.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        log.info("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected", name)

    servers = [s.strip() for s in nats_url(url).split(",") if s.strip()]
    secrets = (credentials or Credentials.from_env()).connect_options(servers)
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
        **secrets,
    )


def server_cluster(nc: NATS) -> str:
    """The name of the NATS cluster the connection's server belongs to ("" standalone)."""
    info = getattr(nc, "_server_info", None) or {}
    cluster = info.get("cluster", "")
    return cluster if isinstance(cluster, str) else ""


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
    call: reply tokens come from a counter rather than ``os.urandom``, and
    timeouts are swept by one task (see ``_deadlines``) instead of a timer and a
    ``wait_for`` per request. Use as an async context manager.
    """

    def __init__(self, nc: NATS, *, tick: float = 0.005) -> None:
        self._nc = nc
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._counter = itertools.count(1)
        self._sub: Subscription | None = None
        self._deadlines: Deadlines[str] = Deadlines(self._expire, tick=tick)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        self._prefix = f"{self._nc.new_inbox()}."
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        await self._stack.enter_async_context(self._deadlines.running())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()
        if self._sub is not None and not self._nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        for future in self._pending.values():
            future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _expire(self, token: str) -> None:
        future = self._pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(NoReply())

    async def request(
        self, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str] | None
    ) -> Msg:
        """Send one request; raises NoResponse or NoReply (up to one tick after ``timeout``)."""
        token = str(next(self._counter))
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        self._deadlines.add(token, time.monotonic() + timeout)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            self._pending.pop(token, None)
            self._deadlines.discard(token)
        if msg.data or not msg.headers or msg.headers.get(STATUS) != NO_RESPONDERS:
            return msg
        raise NoResponse
