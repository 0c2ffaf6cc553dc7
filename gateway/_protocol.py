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

Every connection gets ``TCP_NODELAY`` here (:func:`no_delay`), whatever loop
accepted it and however its listening socket was made: uvicorn writes a response
in two sends (head, body), and with Nagle on the second waits for the client's
delayed ACK, about 40 ms per keep-alive request. And the two become one send
(:class:`OneSend`): a send on a TCP socket is the costliest line of a request.

The app checks the complete head (field count and bytes) and the body's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import importlib.util
import logging
import socket
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway._errors import error_body
from gateway._limits import GatewayLimits

#: Seconds a connection closed on an unfinished request body keeps draining it.
LINGER: Final = 2.0
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


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection (a no-op on other transports)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # asyncio sets it only when the listener's proto is IPPROTO_TCP; uvloop always does.
        with contextlib.suppress(OSError):  # the peer may be gone already
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class OneSend:
    """A connection's transport whose writes in one turn of the event loop leave in one send.

    uvicorn writes a response's head and its body separately, back to back: this
    holds the first write until the next one (then sends both at once) or until the
    loop's next turn, whichever comes first, so nothing waits longer than that and
    the order of bytes is kept. Everything but ``write`` and ``close`` is the transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            if not data:
                return
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


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


class Lingering:
    """The connection's transport, as the protocol sees it: close() lingers on an unfinished body.

    Everything else is the transport's own.
    """

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        cycle = self._protocol.cycle
        if cycle is None or not cycle.more_body or not transport.can_write_eof():
            transport.close()
            return
        # The protocol drops whatever arrives from now on (see ``lingering``); the client's
        # own FIN (eof_received) or the timer ends the connection.
        self.lingering = True
        transport.write_eof()  # once the answer in the buffer is written
        transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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
            super().connection_lost(exc)

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
