"""Connecting to NATS: which servers, how long to try, and what to say about it.

Part of the seam to nats-py (with :mod:`natsmesh.transport._transport`, which re-exports
these names): the connect options every natsmesh participant uses, the check of
server URLs before connecting, and the connection's callbacks, which log each
change of state once instead of nats-py's every attempt. The connections it makes
get the private internals of :mod:`natsmesh.transport._nats_internals` (a faster
header parse, refusal events), where that module's version guard allows.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

import anyio

from natsmesh.transport._credentials import Credentials
from natsmesh.transport._nats import NATS, AuthorizationError
from natsmesh.transport._nats_internals import fast_header_parse, refusal_error_cb
from natsmesh.wire._errors import NatsRefused, NatsUnreachable

__all__ = [
    "DEFAULT_URL",
    "connect",
    "describe",
    "nats_url",
    "redact",
    "server_urls",
]

log = logging.getLogger("natsmesh")

DEFAULT_URL: Final = "nats://127.0.0.1:4222"


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
    bad ones raise :class:`~natsmesh.transport._credentials.CredentialsError` before connecting.

    The first connection: with ``give_up_after=None`` (long-running processes) it
    is tried until it succeeds, as a service started before its server wants.
    With ``give_up_after`` seconds (one-shot tools) it raises
    :class:`~natsmesh.wire._errors.NatsUnreachable` once they have passed, and
    :class:`~natsmesh.wire._errors.NatsRefused` at once when a server refuses the
    credentials; failed attempts are then not logged above DEBUG, the exception says it all.
    """
    if give_up_after is not None and give_up_after <= 0:
        raise ValueError("give_up_after must be positive")
    servers = server_urls(url)
    secrets = (credentials or Credentials.from_env()).connect_options(servers)
    nc = NATS()
    fast_header_parse(nc)
    events = _ConnectionLog(nc, name, servers, quiet=give_up_after is not None)
    options = _options(nc, name, servers, events) | secrets
    try:
        with anyio.move_on_after(give_up_after) as scope:  # None: no deadline
            if give_up_after is not None:
                events.on_refused = scope.cancel  # no point trying the same credentials again
            await nc.connect(**options)
    except BaseException:
        # Cancelled while trying (a signal stopping a process that waits for its server):
        # nats-py's reconnecting state is left behind otherwise. (A client that failed
        # before it had set itself up cannot even be closed: nothing to clean up then.)
        with anyio.CancelScope(shield=True):
            try:
                await nc.close()
            except Exception as exc:
                log.debug("closing a connection that never connected failed: %r", exc)
        raise
    events.on_refused = None
    if scope.cancelled_caught:
        await nc.close()
        raise events.unreachable(give_up_after or 0.0)
    events.connected()
    return nc


def _options(nc: NATS, name: str, servers: list[str], events: _ConnectionLog) -> dict[str, Any]:
    return {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 5,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
        "error_cb": refusal_error_cb(nc, events.on_error),
        "disconnected_cb": events.on_disconnect,
        "reconnected_cb": events.on_reconnect,
    }


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
