"""The seam to nats-py: connecting, and turning its outcomes into natsmesh's.

Everything else speaks in subjects, bytes and headers; this module alone knows
nats-py's connect options and exception types.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping
from typing import Final, Self

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import AuthorizationError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from natsmesh._credentials import Credentials
from natsmesh._deadlines import Deadlines
from natsmesh._errors import NatsRefused, NatsUnreachable, PermissionDenied

log = logging.getLogger("natsmesh")

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
STATUS: Final = "Status"
NO_RESPONDERS: Final = "503"

__all__ = [
    "NATS",
    "Msg",
    "NoReply",
    "NoResponse",
    "Requester",
    "connect",
    "describe",
    "nats_url",
    "redact",
    "request",
    "server_urls",
]


def nats_url(explicit: str | None = None) -> str:
    """The server to use: an explicit URL, else ``NATS_URL``, else the local default."""
    return explicit or os.environ.get("NATS_URL") or DEFAULT_URL


async def connect(
    url: str | None = None,
    *,
    name: str,
    credentials: Credentials | None = None,
    give_up_after: float | None = None,
) -> NATS:
    """Connect with the options a mesh participant wants.

    Once connected, reconnects forever (a mesh outlives server restarts), logging
    each change of state once (lost, still unreachable every 30 s, back) rather
    than nats-py's every attempt. ``url`` may list several servers, comma-separated.
    ``credentials`` default to the environment's (``NATS_USER``, ``NATS_CREDS``, ...);
    bad ones raise :class:`~natsmesh._credentials.CredentialsError` before connecting.

    The first connection: with ``give_up_after=None`` (long-running processes) it
    is tried until it succeeds, as a service started before its server wants.
    With ``give_up_after`` seconds (one-shot tools) it raises
    :class:`~natsmesh._errors.NatsUnreachable` once they have passed, and
    :class:`~natsmesh._errors.NatsRefused` at once when a server refuses the
    credentials; failed attempts are then not logged above DEBUG, the exception says it all.
    """
    if give_up_after is not None and give_up_after <= 0:
        raise ValueError("give_up_after must be positive")
    servers = server_urls(url)
    secrets = (credentials or Credentials.from_env()).connect_options(servers)
    nc = NATS()
    events = _ConnectionLog(nc, name, servers, quiet=give_up_after is not None)
    options = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 5,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
        "error_cb": events.on_error,
        "disconnected_cb": events.on_disconnect,
        "reconnected_cb": events.on_reconnect,
        **secrets,
    }
    try:
        with anyio.move_on_after(give_up_after) as scope:  # None: no deadline
            if give_up_after is not None:
                events.on_refused = scope.cancel  # no point trying the same credentials again
            await nc.connect(**options)
    except BaseException:
        # Cancelled while trying (a signal stopping a process that waits for its server):
        # nats-py's reconnecting state is left behind otherwise. (A client that failed
        # before it had set itself up cannot even be closed: nothing to clean up then.)
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await nc.close()
        raise
    events.on_refused = None
    if scope.cancelled_caught:
        await nc.close()
        raise events.unreachable(give_up_after or 0.0)
    events.connected()
    return nc


_SCHEMES: Final = ("nats", "tls", "ws", "wss")


def server_urls(url: str | None = None) -> list[str]:
    """The servers ``url`` lists (comma-separated; default as :func:`nats_url`), checked.

    Raises ValueError naming a URL nats-py could not use (a bad scheme, no host, a
    port out of range), before anything tries to connect.
    """
    servers = [s.strip() for s in nats_url(url).split(",") if s.strip()]
    if not servers:
        raise ValueError("no NATS server URL given")
    for server in servers:
        parts = urllib.parse.urlsplit(server if "://" in server else f"nats://{server}")
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValueError(f"NATS server URL {redact(server)!r}: {exc}") from None
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"NATS server URL {redact(server)!r}: the scheme must be one of"
                f" {', '.join(s + '://' for s in _SCHEMES)}"
            )
        host = parts.hostname or ""
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"NATS server URL {redact(server)!r}: no host name")
    return servers


#: How often a connection that keeps failing says so again; its first failure, its
#: loss and its recovery are logged at once.
STILL_FAILING_EVERY: Final = 30.0


def describe(exc: BaseException) -> str:
    """``exc`` as one line that is never empty (``str()`` of some exceptions is)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def redact(url: str) -> str:
    """``url`` with any password or token replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    hidden = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{hidden}@{host}"


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


class _ConnectionLog:
    """A connection's callbacks: its state changes logged once each, never an empty line."""

    def __init__(self, nc: NATS, name: str, servers: list[str], *, quiet: bool) -> None:
        self._nc = nc
        self._name = name
        self._where = ", ".join(redact(s) for s in servers)
        self._quiet = quiet  # the first connection's failures: DEBUG (the caller raises)
        self._was_connected = False
        self._failing_since: float | None = None
        self._next_report = 0.0
        self._last_error: BaseException | None = None
        self.on_refused: Callable[[], None] | None = None

    async def on_error(self, exc: Exception) -> None:
        if self._nc.is_connected:
            log.warning("nats %s: %s", self._name, describe(exc))
        elif not self._nc.is_closed:
            self._failed(exc)
        else:
            log.debug("nats %s: %s", self._name, describe(exc))

    async def on_disconnect(self) -> None:
        if not self._nc.is_closed:  # else a close this process asked for
            self._failed(None)

    async def on_reconnect(self) -> None:
        self._recovered("reconnected to")

    def connected(self) -> None:
        self._quiet = False
        self._recovered("connected to")
        self._was_connected = True

    def unreachable(self, waited: float) -> NatsUnreachable:
        error = self._last_error
        reason = "no answer" if error is None else describe(error)
        refused = error is not None and _refused(error)
        return (NatsRefused if refused else NatsUnreachable)(
            self._where, waited=waited, reason=reason
        )

    def _failed(self, exc: BaseException | None) -> None:
        now = time.monotonic()
        if exc is not None:
            self._last_error = exc
        reason = "" if exc is None else f": {describe(exc)}"
        level = logging.DEBUG if self._quiet else logging.WARNING
        if self._failing_since is None:
            self._failing_since = now
            self._next_report = now + STILL_FAILING_EVERY
            if self._was_connected:
                log.log(
                    level,
                    "nats %s: disconnected from %s%s (reconnecting)",
                    self._name,
                    self._where,
                    reason,
                )
            else:
                log.log(
                    level,
                    "nats %s: cannot connect to %s%s (retrying)",
                    self._name,
                    self._where,
                    reason,
                )
        elif now >= self._next_report and exc is not None:
            self._next_report = now + STILL_FAILING_EVERY
            log.log(
                level,
                "nats %s: still cannot connect to %s after %.0f s%s (retrying)",
                self._name,
                self._where,
                now - self._failing_since,
                reason,
            )
        if exc is not None and _refused(exc) and self.on_refused is not None:
            self.on_refused()

    def _recovered(self, what: str) -> None:
        if self._failing_since is not None:
            down = time.monotonic() - self._failing_since
            log.warning("nats %s: %s %s after %.1f s", self._name, what, self._where, down)
        self._failing_since = None
        self._last_error = None


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
    _BUFFER = ("_pending", "_pending_data_size", "_max_pending_size", "_flush_queue", "_status")
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
