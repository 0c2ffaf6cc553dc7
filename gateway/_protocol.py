"""uvicorn's HTTP/1.1 protocols with the gateway's limits on reading a request.

The one module that subclasses uvicorn's protocol classes (``H11Protocol``,
``HttpToolsProtocol``) and overrides their internals (``cycle``, ``transport``,
``data_received``): on a uvicorn in :data:`TESTED_UVICORN` only. On another, the
gateway runs uvicorn's stock protocols (its own limits: ``timeout_keep_alive``,
h11's head bound) with only ``TCP_NODELAY`` added, through asyncio's public
``Protocol.connection_made``; a warning says so once. (The README's table
"Private internals we rely on".)

The ASGI app sees a request only once its head (request line and headers) is
complete, so what a slow or oversized request costs is bounded below it:

- a deadline (slowloris): from the first byte of a request (or a new connection)
  to the last byte of its body, at most ``read_timeout``; else 408 (unless an
  answer has started) and the connection closes. One timer per connection, armed
  only while a request is incomplete: a request that arrives whole costs none;
- the head's size: h11 bounds it itself (``h11_max_incomplete_event_size``);
  httptools does not, so :class:`LimitedHttpTools` counts it;
- a lingering close: a connection closed while the client is still sending its
  body (a 413 answered at once) first sends the answer and a FIN, then reads and
  drops what still comes for up to ``LINGER`` seconds. Closing a socket with
  unread bytes answers them with a reset, and a client that is still uploading
  (Python's http.client, urllib, requests) then fails on its next write and
  never reads the 413 (nginx's lingering close).

Every connection gets ``TCP_NODELAY``, one send per response and a keep-alive
timeout without a timer per response: :mod:`gateway._transports`.

The app checks the complete head (field count and bytes) and the body's size.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import importlib.util
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway._errors import error_body
from gateway._limits import GatewayLimits
from gateway._transports import LINGER, IdleTimer, Lingering, OneSend, no_delay

__all__ = ["LINGER", "LimitedH11", "protocol_class", "uvicorn_known"]

#: uvicorn versions (prefixes) whose protocol internals the subclasses here were tested with.
TESTED_UVICORN: Final = ("0.55.",)
# The request line and the separators, beyond the URL and header bytes counted.
_SLACK: Final = 1024
log = logging.getLogger("gateway")

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def raw_response(status: int, kind: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection."""
    body = error_body(status, kind, message)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b"Error"), len(body), body)
    )


class _HeadDeadline:
    """The deadline of the request one connection is receiving."""

    __slots__ = ("_cycle", "_timer", "_transport")

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._cycle: Any = None

    def arm(self, transport: asyncio.Transport, seconds: float, cycle: Any = None) -> None:
        self._cycle = cycle
        if self._timer is None:
            self._transport = transport
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        cycle = self._cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            # The app, if it waits for the body, sees the client disconnect.
            message = "the request was not received in time"
            transport.write(raw_response(408, "request_timeout", message))
        transport.close()


class LimitedH11(H11Protocol):
    """h11 with a deadline on every request head and a lingering close."""

    limits: ClassVar[GatewayLimits] = GatewayLimits()

    def connection_made(self, transport: Any) -> None:
        no_delay(transport)
        self._linger = Lingering(cast(asyncio.Transport, OneSend(transport, self.loop)), self)
        super().connection_made(self._linger)  # type: ignore[arg-type]  # the transport's stand-in
        self._head = _HeadDeadline()
        self._head.arm(self.transport, self.limits.read_timeout)

    def data_received(self, data: bytes) -> None:
        if self._linger.lingering:
            return
        before = self.cycle
        super().data_received(data)
        _after_data(self, before)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head.disarm()
        self._linger.lost()
        super().connection_lost(exc)


def _after_data(protocol: Any, before: Any) -> None:
    """After bytes arrived: arm the deadline while a request is incomplete, else disarm it."""
    head: _HeadDeadline = protocol._head
    cycle = protocol.cycle
    if cycle is not before and not cycle.more_body:
        head.disarm()  # a whole request arrived
    elif cycle is None or cycle.response_complete or cycle.more_body:
        # A head, or a body, still on its way: read_timeout from its first byte.
        head.arm(protocol.transport, protocol.limits.read_timeout, cycle)
    else:
        head.disarm()


_HAVE_HTTPTOOLS: Final = importlib.util.find_spec("httptools") is not None

if TYPE_CHECKING or _HAVE_HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class LimitedHttpTools(HttpToolsProtocol):
        """httptools with a deadline on every request head, a bound on its size, a lingering
        close. httptools (llhttp) keeps a header's pieces until the header ends: this counts
        the bytes of a head not complete yet and refuses it (431, the connection closed)
        once they pass ``max_header_bytes``.
        """

        limits: ClassVar[GatewayLimits] = GatewayLimits()

        def connection_made(self, transport: Any) -> None:
            no_delay(transport)
            self._linger = Lingering(cast(asyncio.Transport, OneSend(transport, self.loop)), self)
            super().connection_made(self._linger)  # type: ignore[arg-type]  # the transport's stand-in
            self._head = _HeadDeadline()
            self._head.arm(self.transport, self.limits.read_timeout)
            self._refused = False
            self._pending = 0  # bytes of the head not complete yet
            self._idle = IdleTimer(
                self.loop, self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def data_received(self, data: bytes) -> None:
            if self._refused or self._linger.lingering:
                return
            before = self.cycle
            waiting = before is None or before.response_complete
            super().data_received(data)
            if self.cycle is not before:
                self._pending = 0
            elif waiting:
                self._pending += len(data)
                if self._pending > self.limits.max_header_bytes + _SLACK:
                    self._refuse()
                    return
            _after_data(self, before)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head.disarm()
            self._linger.lost()
            self._idle.cancel()
            super().connection_lost(exc)

        def _unset_keepalive_if_required(self) -> None:
            self._idle.busy()

        def on_response_complete(self) -> None:
            # uvicorn's, but with the keep-alive timeout of _IdleTimer.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._idle.busy()
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle.idle()

        def _refuse(self) -> None:
            self._refused = True
            self._head.disarm()
            if not self.transport.is_closing():
                self.transport.write(
                    raw_response(431, "headers_too_large", "request head too large")
                )
                self.transport.close()


@functools.cache
def _uvicorn() -> str:
    try:
        return importlib.metadata.version("uvicorn")
    except importlib.metadata.PackageNotFoundError:
        return ""


def uvicorn_known(version: str | None = None) -> bool:
    """Whether the installed uvicorn (or ``version``) is one the subclasses here know."""
    return (_uvicorn() if version is None else version).startswith(TESTED_UVICORN)


def _stock(base: type[Any]) -> type[Any]:
    """uvicorn's own protocol ``base``, with only ``TCP_NODELAY`` on each connection."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        no_delay(transport)
        base.connection_made(self, transport)

    return type(f"NoDelay{base.__name__}", (base,), {"connection_made": connection_made})


def protocol_class(limits: GatewayLimits, http: str = "auto") -> type[asyncio.Protocol]:
    """The protocol for uvicorn's ``http=``: httptools where installed (and asked for), else h11.

    With ``limits`` on a tested uvicorn; uvicorn's stock protocol (plus ``TCP_NODELAY``)
    on another.
    """
    if http not in ("auto", "h11", "httptools"):
        raise ValueError(f"unknown HTTP implementation {http!r}")
    if http == "httptools" and not _HAVE_HTTPTOOLS:
        raise ValueError("httptools is not installed (pip install httptools)")
    use_httptools = http != "h11" and _HAVE_HTTPTOOLS
    if not uvicorn_known():
        _warn_untested()
        return _stock(HttpToolsProtocol if use_httptools else H11Protocol)
    base: type[Any] = LimitedHttpTools if use_httptools else LimitedH11
    return type(base.__name__, (base,), {"limits": limits})


@functools.cache
def _warn_untested() -> None:
    log.warning(
        "uvicorn %s is not one the gateway's protocol was tested with (%s): running uvicorn's"
        " own protocol, without the gateway's request-head deadline, head-size bound for"
        " httptools and lingering close",
        _uvicorn() or "(unknown)",
        ", ".join(v + "x" for v in TESTED_UVICORN),
    )
