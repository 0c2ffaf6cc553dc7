"""The seam to nats-py: connecting, requests, subscriptions, and nats-py's outcomes as natsmesh's.

The functions and the :class:`Requester` here take nats-py's client; above the
transport nothing does: the rest of natsmesh holds a
:class:`~natsmesh.transport._link.Link`, which forwards to them (``tests/test_layers.py``
keeps it so). Connecting is :mod:`natsmesh.transport._connection`, whose names this
module re-exports. Where the hot path reaches past nats-py's public API (the frames
the :class:`Requester` writes, the hand-over of replies, refusal events, the server's
zone) lives in ``_nats_internals``, behind its version guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Final, Self

from natsmesh.transport._connection import (
    DEFAULT_URL,
    connect,
    describe,
    nats_url,
    redact,
    server_urls,
)
from natsmesh.transport._deadlines import Deadlines
from natsmesh.transport._delivery import deliver_directly
from natsmesh.transport._nats import (
    NATS,
    NUID,
    MaxPayloadError,
    Msg,
    NatsTimeoutError,
    NoRespondersError,
    Subscription,
)
from natsmesh.transport._nats_internals import FrameWriter, hand_over, listen_refusals, server_zone
from natsmesh.wire._errors import MessageTooLarge, PermissionDenied

log = logging.getLogger("natsmesh")

STATUS: Final = "Status"
NO_RESPONDERS: Final = "503"

__all__ = [
    "DEFAULT_URL",
    "NATS",
    "Lost",
    "Msg",
    "NoReply",
    "NoResponse",
    "Requester",
    "Subscription",
    "connect",
    "describe",
    "nats_url",
    "new_id",
    "publish",
    "redact",
    "request",
    "server_cluster",
    "server_urls",
    "subscribe_direct",
]

#: The zone of a connection: the name of its server's NATS cluster ("" standalone).
server_cluster = server_zone


def new_id() -> str:
    """A new unique id (an instance's, a controller's): a NATS NUID, as NATS tools show."""
    return NUID().next().decode()


async def publish(
    nc: NATS, subject: str, payload: bytes, *, headers: dict[str, str] | None = None
) -> None:
    """Publish one message with nats-py's publish(); raises MessageTooLarge past max_payload."""
    try:
        await nc.publish(subject, payload, headers=headers)
    except MaxPayloadError:
        raise MessageTooLarge(subject, len(payload), nc.max_payload) from None


class NoReply(Exception):
    """No reply within the timeout."""


class NoResponse(Exception):
    """The server answered "no responders" for the subject."""


class Lost(Exception):
    """The request's responder is known to be gone: no reply will come."""


async def request(
    nc: NATS,
    subject: str,
    payload: bytes,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
) -> Msg:
    """Send one request with nats-py's own request(); raises NoResponse or NoReply."""
    try:
        hdrs = None if headers is None else dict(headers)
        return await nc.request(subject, payload, timeout=timeout, headers=hdrs)
    except NoRespondersError:
        raise NoResponse from None
    except NatsTimeoutError:
        raise NoReply from None
    except MaxPayloadError:
        raise MessageTooLarge(subject, len(payload), nc.max_payload) from None


async def subscribe_direct(
    nc: NATS, subject: str, deliver: Callable[[Msg], None], *, queue: str = ""
) -> Subscription:
    """Subscribe with ``deliver`` called as each message is read (see :func:`hand_over`).

    ``deliver`` is plain code that must not block: what waits, it starts as a task of
    its own. On a nats-py that :func:`hand_over` does not know, nats-py's subscription
    task calls it, one message after the other, as it would a callback.
    """

    async def callback(msg: Msg) -> None:
        deliver(msg)

    sub = await nc.subscribe(subject, queue, cb=callback)
    if hand_over(sub, deliver):
        deliver_directly(sub, deliver)
    return sub


class Requester:
    """Request/reply multiplexed over one wildcard inbox subscription.

    The mesh's hot path. It does what ``nc.request()`` does with less work per
    call: reply tokens are drawn from a pool filled by one ``os.urandom`` per 256
    requests, and timeouts are swept by one task (see ``_deadlines``) instead of a
    timer and a ``wait_for`` per request. Tokens are random, not counted: a
    service sees its callers' reply subjects, and with NATS any publisher may
    name any reply subject, so a guessable token would let it forge the answer to
    a caller's other pending requests.

    A publish the server refuses (the mesh access policy) fails the requests
    waiting on that subject at once with :class:`PermissionDenied`, where it would
    otherwise wait out its timeout (see ``listen_refusals``).

    Use as an async context manager (only :meth:`publish` works without entering it).

    Messages are written by a :class:`~natsmesh.transport._nats_internals.FrameWriter`
    where its version guard allows (``direct=None``) and it accepts the message, else
    by nats-py's ``publish()``; ``direct=False`` insists on ``publish()``.
    """

    def __init__(self, nc: NATS, *, tick: float = 0.005, direct: bool | None = None) -> None:
        self._nc = nc
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._subject_of: dict[str, str] = {}
        self._tokens: list[str] = []
        self._sub: Subscription | None = None
        self._deadlines: Deadlines[str] = Deadlines(self._expire, tick=tick)
        self._stack = contextlib.AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publish_loop: asyncio.AbstractEventLoop | None = None
        self._writer = FrameWriter.for_connection(nc) if direct is not False else None

    async def __aenter__(self) -> Self:
        # Kept: on 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._prefix = f"{self._nc.new_inbox()}."
        if not FrameWriter.safe_reply_prefix(self._prefix):
            self._writer = None  # reply subjects are written unchecked
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        if hand_over(self._sub, self._reply):
            deliver_directly(self._sub, self._reply)
        await self._stack.enter_async_context(self._deadlines.running())
        stop_listening = listen_refusals(self._nc, self._refused)
        if stop_listening is not None:
            self._stack.callback(stop_listening)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()
        if self._sub is not None and not self._nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None
        for future in self._pending.values():
            future.cancel()

    async def _on_reply(self, msg: Msg) -> None:
        self._reply(msg)

    def _reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def _expire(self, token: str) -> None:
        future = self._pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(NoReply())

    def _refused(self, subject: str) -> None:
        # nats-py lower-cases the server's error line, subject included.
        for token, target in list(self._subject_of.items()):
            future = self._pending.get(token)
            if target.lower() == subject and future is not None and not future.done():
                future.set_exception(PermissionDenied(target))

    def lose(self, prefix: str) -> int:
        """Fail at once, with :class:`Lost`, the pending requests sent to subjects under
        ``prefix`` (an instance's own subjects, once it is known to be gone); how many.
        """
        lost = 0
        for token, target in list(self._subject_of.items()):
            future = self._pending.get(token)
            if target.startswith(prefix) and future is not None and not future.done():
                future.set_exception(Lost())
                lost += 1
        return lost

    def _token(self) -> str:
        tokens = self._tokens
        if not tokens:
            entropy = os.urandom(8 * 256).hex()
            tokens.extend(entropy[i : i + 16] for i in range(0, len(entropy), 16))
        return tokens.pop()

    async def request(
        self, subject: str, payload: bytes, *, timeout: float, headers: dict[str, str] | None
    ) -> Msg:
        """Send one request; raises NoResponse or NoReply (up to one tick after ``timeout``)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("use 'async with Requester(...)' before requesting")
        token = self._token()
        reply = self._prefix + token
        future: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = future
        self._subject_of[token] = subject
        self._deadlines.add(token, time.monotonic() + timeout)
        try:
            writer = self._writer  # _send's fast path, inline: this is every call's path
            if writer is not None and (frame := writer.frame(subject, reply, payload, headers)):
                if not writer.write_nowait(frame, len(payload), loop):
                    await writer.finish(loop)
            else:
                await self._send(subject, reply, payload, headers)
            msg = await future
        finally:
            self._pending.pop(token, None)
            del self._subject_of[token]
            self._deadlines.discard(token)
        if msg.data or not msg.headers or msg.headers.get(STATUS) != NO_RESPONDERS:
            return msg
        raise NoResponse

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish one message (a reply, say), as ``nc.publish()`` does; raises what it raises."""
        writer = self._writer  # _send's fast path, inline: a service's every reply comes this way
        if writer is not None and (frame := writer.frame(subject, "", payload, headers)):
            loop = self._publish_loop
            if loop is None:
                # Learned once, also when not entered (a service's replies): without a
                # loop every write waits for nats-py's own flush, a getpid() on 3.11.
                loop = self._publish_loop = asyncio.get_running_loop()
            if not writer.write_nowait(frame, len(payload), loop):
                await writer.finish(loop)
        else:
            await self._send(subject, "", payload, headers)

    async def _send(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> None:
        writer = self._writer
        if writer is not None:
            frame = writer.frame(subject, reply, payload, headers)
            if frame is not None:
                if not writer.write_nowait(frame, len(payload), self._loop):
                    await writer.finish(self._loop)
                return
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        except MaxPayloadError:
            raise MessageTooLarge(subject, len(payload), self._nc.max_payload) from None
