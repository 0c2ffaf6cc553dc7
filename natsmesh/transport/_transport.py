"""The seam to nats-py: connecting, and turning its outcomes into natsmesh's.

Everything else speaks in subjects, bytes and headers; this module (with
:mod:`natsmesh.transport._connection`, whose names it re-exports) alone knows nats-py's
connect options and exception types, and where the mesh's hot path reaches past
nats-py's public API (the README's table of dependency internals lists them with
the others):

- :class:`Requester` writes PUB/HPUB frames straight into the connection's
  outgoing buffer (``_pending``, ``_pending_data_size``, ``_flush_queue``):
  ``publish()`` spends more on a few headers than the rest of a call. Without
  those attributes: ``publish()``.
- :func:`hand_over` replaces the reply subscription's pending queue
  (``_pending_queue``, ``_pending_size``, ``_wait_for_msgs_task``) by a
  hand-over to the waiting request: a reply otherwise takes a queue, a task
  switch and a callback coroutine to reach it. On a nats-py not in
  ``TESTED_NATS_PY``: the subscription's callback, as nats-py runs it.
- :func:`connect` gives its connections a faster ``_parse_header_lines`` (see
  :mod:`natsmesh.transport._connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Final, Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from natsmesh.transport._connection import (
    DEFAULT_URL,
    connect,
    describe,
    nats_url,
    redact,
    server_urls,
    tested_nats_py,
)
from natsmesh.transport._deadlines import Deadlines
from natsmesh.wire._errors import PermissionDenied

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
    "connect",
    "describe",
    "hand_over",
    "nats_url",
    "redact",
    "request",
    "server_urls",
    "subscribe_direct",
]


def server_cluster(nc: NATS) -> str:
    """The name of the NATS cluster the connection's server belongs to ("" standalone)."""
    info = getattr(nc, "_server_info", None) or {}
    cluster = info.get("cluster", "")
    return cluster if isinstance(cluster, str) else ""


class NoReply(Exception):
    """No reply within the timeout."""


class NoResponse(Exception):
    """The server answered "no responders" for the subject."""


class Lost(Exception):
    """The request's responder is known to be gone: no reply will come."""


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


class _HandOver:
    """Stands in for a subscription's pending queue: every message goes on at once.

    nats-py's reader puts each message in the queue (``put_nowait``) after adding its
    size to the subscription's pending bytes; a task per subscription then takes it
    out and awaits the callback. Here the reader's ``put_nowait`` hands the message
    to ``deliver`` (plain code, never raising), in the reader's own step.
    """

    __slots__ = ("_deliver", "_sub")

    def __init__(self, sub: Subscription, deliver: Callable[[Msg], None]) -> None:
        self._sub = sub
        self._deliver = deliver

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)
        try:
            self._deliver(msg)
        except Exception:  # never into nats-py's reader, which would drop the connection
            log.exception("delivering a reply failed")

    # What nats-py asks a subscription's queue elsewhere (pending counts, drain).
    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        return None


def hand_over(sub: Subscription, deliver: Callable[[Msg], None]) -> bool:
    """Deliver ``sub``'s messages to ``deliver`` as nats-py reads them, instead of its callback.

    Only on a subscription with nothing pending (a new one) and a tested nats-py;
    returns False (the callback goes on) otherwise.
    """
    if not tested_nats_py():
        return False
    queue = getattr(sub, "_pending_queue", None)
    task = getattr(sub, "_wait_for_msgs_task", None)
    if not isinstance(queue, asyncio.Queue) or not queue.empty() or task is None:
        return False
    if not hasattr(sub, "_pending_size"):
        return False
    sub._pending_queue = _HandOver(sub, deliver)  # type: ignore[assignment]
    task.cancel()  # it waits on the old queue, which nothing fills any more
    return True


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
    hand_over(sub, deliver)
    return sub


_REFUSED: Final = re.compile(r'permissions violation for publish to "([^"]+)"')
_listeners: weakref.WeakKeyDictionary[NATS, set[Requester]] = weakref.WeakKeyDictionary()


def _refusals(nc: NATS) -> set[Requester]:
    """The requesters to tell when the server refuses one of ``nc``'s publishes.

    The first call wraps the connection's error callback, once: nats-py reports
    a permissions violation there and nowhere else, and drops the message.
    """
    listeners = _listeners.get(nc)
    if listeners is None:
        listeners = _listeners[nc] = set()
        previous = nc._error_cb

        async def on_error(exc: Exception) -> None:
            refused = _REFUSED.search(str(exc))
            if refused is not None:
                for requester in list(listeners):
                    requester._refused(refused.group(1))
            await previous(exc)

        nc._error_cb = on_error
    return listeners


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
    otherwise wait out its timeout: nats-py reports the refusal only to the
    connection's error callback, which the requester listens to.

    Use as an async context manager (only :meth:`publish` works without entering it).

    While the connection is plainly connected, a message is written as the very
    protocol frame nats-py's ``publish()`` would write, straight into its outgoing
    buffer: ``publish()`` spends more on a few headers (a regular expression and
    four buffer copies per header) than the rest of a call does. Anything else
    (reconnecting, draining, a subject, name or value that needs nats-py's own
    checks or rewriting, a nats-py without that buffer) goes through ``publish()``.
    """

    # nats-py's rules: a header name is a token, and a subject holds no whitespace
    # (CR/LF would start a new protocol line).
    _HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
    _BAD_SUBJECT = re.compile(r"\s")
    _BUFFER = (
        "_pending",
        "_pending_data_size",
        "_max_pending_size",
        "_flush_queue",
        "_flusher_task",
        "_status",
    )
    _CHECKED = 4096  # subjects and header names remembered as checked

    def __init__(self, nc: NATS, *, tick: float = 0.005) -> None:
        self._nc = nc
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[Msg]] = {}
        self._subject_of: dict[str, str] = {}
        self._tokens: list[str] = []
        self._sub: Subscription | None = None
        self._deadlines: Deadlines[str] = Deadlines(self._expire, tick=tick)
        self._stack = contextlib.AsyncExitStack()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._direct = all(hasattr(nc, a) for a in self._BUFFER)
        self._subjects: set[str] = set()
        self._names: set[str] = set()

    async def __aenter__(self) -> Self:
        # Kept: on 3.11 every get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._prefix = f"{self._nc.new_inbox()}."
        if self._BAD_SUBJECT.search(self._prefix):
            self._direct = False  # reply subjects are written unchecked below
        self._sub = await self._nc.subscribe(f"{self._prefix}*", cb=self._on_reply)
        hand_over(self._sub, self._reply)
        await self._stack.enter_async_context(self._deadlines.running())
        _refusals(self._nc).add(self)
        self._stack.callback(_refusals(self._nc).discard, self)
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
        await self._send(subject, "", payload, headers)

    async def _send(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> None:
        # ``reply`` is written unchecked: it is empty or one of ours (the prefix is checked).
        nc = self._nc
        frame = self._frame(subject, reply, payload, headers) if self._direct else None
        if frame is None:
            await nc.publish(subject, payload, reply=reply, headers=headers)
            return
        # What publish() does once it has its frame: count, queue, wake the flusher.
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        nc._pending.append(frame)
        nc._pending_data_size += len(frame)
        if 0 < nc._max_pending_size < nc._pending_data_size:
            await nc._flush_pending(force_flush=True)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            flusher, loop = nc._flusher_task, self._loop
            if loop is not None and flusher is not None and not flusher.done():
                # What _flush_pending() does then, minus two coroutines and the loop
                # lookup of asyncio.Future() (a getpid() system call on 3.11).
                nc._flush_queue.put_nowait(loop.create_future())
            else:
                await nc._flush_pending()

    def _frame(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> bytes | None:
        """The PUB or HPUB frame ``publish()`` would write; None where only it may write."""
        nc = self._nc
        if nc._status != NATS.CONNECTED or len(payload) > nc.max_payload:
            return None
        if subject not in self._subjects:
            if not subject or self._BAD_SUBJECT.search(subject):
                return None
            if len(self._subjects) < self._CHECKED:
                self._subjects.add(subject)
        if headers is None:  # an empty dict still makes an HPUB, as in publish()
            return b"%s%s\r\n" % (f"PUB {subject} {reply} {len(payload)}\r\n".encode(), payload)
        lines = ["NATS/1.0\r\n"]
        for name, value in headers.items():
            if name not in self._names:
                if not self._HEADER_NAME.fullmatch(name):
                    return None
                if len(self._names) < self._CHECKED:
                    self._names.add(name)
            # publish() strips a value and turns CR/LF into spaces: such values go there.
            if value.strip() != value or "\r" in value or "\n" in value:
                return None
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode()
        size = len(head)
        return b"%s%s%s\r\n" % (
            f"HPUB {subject} {reply} {size} {size + len(payload)}\r\n".encode(),
            head,
            payload,
        )
