"""A :class:`Link`: one nats-py connection, as the rest of natsmesh uses it.

The seam's one object. Everything above the transport (the client, the service
runtime, the controller, the observers, the command line) holds a Link, never the
nats-py client: it subscribes, publishes, requests, flushes and closes through it,
learns the server's zone and ``max_payload`` from it, hears refused publishes
through it, and hands it to the KV helpers of :mod:`natsmesh.transport._kv`. A
test in ``tests/test_layers.py`` keeps it so.

A Link either owns its connection (:meth:`Link.open` connected it: :meth:`release`
drains and closes it) or wraps one a user passed in (never closed or drained here;
its callbacks stay the user's, see ``listen_refusals``). The hot path does not go
through a Link call per message: the :class:`~natsmesh.transport._transport.Requester`
it hands out (:meth:`requester`) writes frames itself, and a subscription's messages
are handed over to plain code (:meth:`subscribe_direct`). Its methods forward, with
nats-py's outcomes translated into natsmesh's (:class:`MessageTooLarge`,
:class:`NoResponse`, :class:`NoReply`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from natsmesh.transport._credentials import Credentials
from natsmesh.transport._flush import FLUSH_TIMEOUT, flush
from natsmesh.transport._nats import MaxPayloadError
from natsmesh.transport._nats_internals import Refused, listen_refusals, server_zone
from natsmesh.transport._transport import (
    NATS,
    Msg,
    Requester,
    connect,
    request,
    subscribe_direct,
)
from natsmesh.transport._transport import Subscription as NatsSubscription
from natsmesh.wire._errors import MessageTooLarge

__all__ = ["Link", "Msg", "Subscription"]

log = logging.getLogger("natsmesh")

#: How long :meth:`Link.release` lets a drain take before it closes what is left.
RELEASE_WITHIN: Final = 5.0


class Link:
    """One nats-py connection: the only way natsmesh above the transport reaches NATS."""

    __slots__ = ("_nc", "owned")

    def __init__(self, nc: NATS, *, owned: bool = False) -> None:
        self._nc = nc
        #: True when this Link connected it: :meth:`release` then drains and closes it.
        self.owned = owned

    @classmethod
    async def open(
        cls,
        nats: str | NATS | Link | None,
        *,
        name: str,
        credentials: Credentials | None = None,
        give_up_after: float | None = None,
    ) -> Link:
        """A Link on ``nats``: a connection the caller owns (wrapped, never closed here),
        or a new one to the server URL(s) ``nats`` names (see
        :func:`~natsmesh.transport._connection.connect`, whose exceptions it raises).
        """
        if isinstance(nats, Link):
            return cls(nats._nc)
        if isinstance(nats, NATS):
            return cls(nats)
        nc = await connect(nats, name=name, credentials=credentials, give_up_after=give_up_after)
        return cls(nc, owned=True)

    # -- what it is ------------------------------------------------------------------------

    @property
    def nats(self) -> NATS:
        """The nats-py client, for the public escape hatch ``Mesh.nats`` only."""
        return self._nc

    @property
    def is_connected(self) -> bool:
        return self._nc.is_connected

    @property
    def is_closed(self) -> bool:
        return self._nc.is_closed

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (bytes)."""
        return self._nc.max_payload

    @property
    def zone(self) -> str:
        """The name of the NATS cluster of the server it is connected to ("" standalone)."""
        return server_zone(self._nc)

    def new_inbox(self) -> str:
        """A fresh inbox subject (its prefix names the identity, under an access policy)."""
        return self._nc.new_inbox()

    # -- messages --------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish one message; raises MessageTooLarge past the server's ``max_payload``."""
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        except MaxPayloadError:
            raise MessageTooLarge(subject, len(payload), self._nc.max_payload) from None

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """One request by nats-py's own ``request()`` (cold paths: the hot one is a
        :class:`Requester`'s); raises NoResponse, NoReply or MessageTooLarge.
        """
        return await request(self._nc, subject, payload, timeout=timeout, headers=headers)

    async def subscribe(
        self,
        subject: str,
        *,
        queue: str = "",
        cb: Callable[[Msg], Awaitable[None]] | None = None,
        max_msgs: int = 0,
    ) -> Subscription:
        """Subscribe; ``cb`` runs in the subscription's task, one message after the other.

        Without ``cb`` the messages wait for ``Subscription.next_msg()``. Live once
        the server has processed it: :meth:`flush` before counting on it.
        """
        return Subscription(await self._nc.subscribe(subject, queue, cb=cb, max_msgs=max_msgs))

    async def subscribe_direct(
        self, subject: str, deliver: Callable[[Msg], None], *, queue: str = ""
    ) -> Subscription:
        """Subscribe with ``deliver`` called as each message is read (plain code that
        must not block; see :func:`~natsmesh.transport._transport.subscribe_direct`).
        """
        return Subscription(await subscribe_direct(self._nc, subject, deliver, queue=queue))

    def requester(self) -> Requester:
        """A :class:`Requester` on this connection (enter it before requesting)."""
        return Requester(self._nc)

    def listen_refusals(self, listener: Refused) -> Callable[[], None] | None:
        """Call ``listener(subject)`` when the server refuses one of its publishes;
        the call that stops listening, or None where refusals cannot be heard.
        """
        return listen_refusals(self._nc, listener)

    # -- its life --------------------------------------------------------------------------

    async def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Return once the server has processed everything sent before (subscriptions
        included); raises nats-py's timeout or connection errors.
        """
        await flush(self._nc, timeout)

    async def ping(self, timeout: float) -> None:
        """Return once the server has answered a PING (nats-py's own ``flush()``: a
        round trip, ordered or not); raises nats-py's timeout or connection errors.
        """
        await self._nc.flush(timeout)  # type: ignore[arg-type]  # a float works: wait_for's

    async def drain(self) -> None:
        """Drain the connection: unsubscribe all, deliver what arrived, then close."""
        await self._nc.drain()

    async def close(self) -> None:
        await self._nc.close()

    async def release(self, *, drain: bool = True, within: float = RELEASE_WITHIN) -> None:
        """Close an owned connection: drained (or flushed, ``drain=False``) first, for
        at most ``within`` seconds; shielded, so a cancelled owner still closes.
        A connection a user passed in is left as it is.
        """
        if not self.owned:
            return
        nc = self._nc
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(within):
                try:
                    if drain:
                        await nc.drain()
                    elif nc.is_connected:
                        # close() alone can drop what is still buffered (a drain's last replies).
                        await flush(nc)
                except Exception as exc:  # it was lost meanwhile: close what is left
                    log.debug("draining the connection failed: %s", exc)
            if not nc.is_closed:
                await nc.close()


class Subscription:
    """One subscription made through a :class:`Link`: its subject, and how it ends."""

    __slots__ = ("_sub",)

    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    @property
    def subject(self) -> str:
        return self._sub.subject

    async def next_msg(self, timeout: float) -> Msg:
        """The next message of a subscription made without ``cb``; raises TimeoutError."""
        return await self._sub.next_msg(timeout=timeout)

    async def unsubscribe(self) -> None:
        """Stop at once; messages not yet handled are dropped."""
        await self._sub.unsubscribe()

    async def drain(self) -> None:
        """Stop taking messages, and return once those already received are handled."""
        await self._sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped
