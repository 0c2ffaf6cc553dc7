"""A connection's incoming messages, for its handed-over subscriptions, without nats-py's detours.

nats-py's reader hands every message to ``Client._process_msg``: stats, the
subscription's lookup and count, auto-unsubscribe, JetStream flow control, the
old-style request future, the header parse, a ``Msg``, the slow-consumer
accounting and the subscription's queue (which :func:`~natsmesh.transport.
_nats_internals.hand_over` has turned into a hand-over). For a subscription
handed over, most of that is work for nothing: :class:`DirectDelivery` stands in
for ``_process_msg`` and does the rest itself (the stats, the count, the header
parse, the ``Msg``), then calls the receiver, in the reader's own step. Every
other message, and one for a subscription with an auto-unsubscribe limit, goes
to nats-py's own ``_process_msg`` as before.

Installed for a subscription only once ``hand_over`` has taken it (by the
transport's ``subscribe_direct`` and ``Requester``), so only on a nats-py its
version guard accepts (the README's table "Private internals we rely on"); it
reads ``_subs``, ``_received``, ``_max_msgs``, ``stats``, ``msg_class`` and
``_process_headers``, and replaces the connection's ``_process_msg``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from natsmesh.transport._nats import NATS, Msg, Subscription

__all__ = ["DirectDelivery", "deliver_directly"]

log = logging.getLogger("natsmesh")

Deliver = Callable[[Msg], None]
# nats-py annotates its headers argument as bytes; its parser passes None without any.
ProcessMsg = Callable[..., Awaitable[None]]


class DirectDelivery:
    """Stands in for a connection's ``_process_msg``; :attr:`receivers` by subscription id."""

    __slots__ = ("_nc", "_own", "_seen", "receivers")

    def __init__(self, nc: NATS, own: ProcessMsg) -> None:
        self._nc = nc
        self._own = own  # nats-py's _process_msg, for everything not handed over
        self.receivers: dict[int, tuple[Subscription, Deliver]] = {}
        # The parses a CachedHeaders remembers (natsmesh's own connections): a block
        # seen before is copied here, without the coroutine of _process_headers.
        seen = getattr(nc._process_headers, "seen", None)
        self._seen: dict[bytes, dict[str, str]] = seen if isinstance(seen, dict) else {}

    async def __call__(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        nc = self._nc
        sub = nc._subs.get(sid)
        receiver = self.receivers.get(sid)
        if receiver is None or receiver[0] is not sub or sub._max_msgs > 0:
            if sub is None and receiver is not None:
                del self.receivers[sid]  # unsubscribed: nats-py never reuses an id
            await self._own(sid, subject, reply, data, headers)
            return
        stats = nc.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        sub._received += 1
        parsed = None
        if headers:
            known = self._seen.get(headers)
            parsed = known.copy() if known is not None else await nc._process_headers(headers)
        msg = nc.msg_class(
            _client=nc,
            subject=subject.decode(),
            reply=reply.decode(),
            data=data,
            headers=parsed,
            _sid=sid,
        )
        try:
            receiver[1](msg)
        except Exception:  # never into nats-py's reader, which would drop the connection
            log.exception("delivering a message failed")


def deliver_directly(sub: Subscription, deliver: Deliver) -> None:
    """Send ``sub``'s messages straight from its connection's reader to ``deliver``.

    For a subscription whose queue ``hand_over`` has just replaced: a plain one (no
    JetStream, no request future), which is all the transport makes.
    """
    nc: NATS = sub._conn
    delivery = nc._process_msg
    if not isinstance(delivery, DirectDelivery):
        delivery = DirectDelivery(nc, nc._process_msg)
        nc._process_msg = delivery  # type: ignore[method-assign]
    delivery.receivers[sub._id] = (sub, deliver)
