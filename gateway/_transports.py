"""What the gateway's protocols do to a connection's transport, below HTTP.

- :func:`no_delay`: ``TCP_NODELAY`` on every connection, whatever loop accepted it
  and however its listening socket was made: uvicorn writes a response in two
  sends (head, body), and with Nagle on the second waits for the client's delayed
  ACK, about 40 ms per keep-alive request;
- :class:`OneSend`: and those two sends become one (a send on a TCP socket is the
  costliest line of a request);
- :class:`Lingering`: a connection closed on an unfinished request body first
  sends the answer and a FIN, then drains what still comes (nginx's lingering close);
- :class:`IdleTimer`: the keep-alive timeout as one timer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, Final

#: Seconds a connection closed on an unfinished request body keeps draining it.
LINGER: Final = 2.0


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
            # One callback per turn of the loop flushes whatever is still held then,
            # for every connection: not one call_soon per response.
            waiting = _WAITING.get(self._loop)
            if waiting is None:
                waiting = _WAITING[self._loop] = []
                self._loop.call_soon(_flush_waiting, self._loop)
            waiting.append(self)
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


#: Per event loop: the OneSends that held a write in this turn of the loop.
_WAITING: dict[asyncio.AbstractEventLoop, list[OneSend]] = {}


def _flush_waiting(loop: asyncio.AbstractEventLoop) -> None:
    for one in _WAITING.pop(loop, ()):
        one._flush()


class IdleTimer:
    """The keep-alive timeout of one connection, as one timer for the connection's life.

    uvicorn arms a new timer after every response and cancels it when the next
    request arrives: on uvloop, 2.5 µs a request. This timer, when due, looks at
    how long the connection has been idle and waits again for the rest.
    """

    __slots__ = ("_expire", "_loop", "_seconds", "_since", "_timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, expire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._seconds = seconds
        self._expire = expire
        self._since: float | None = None  # loop.time() when the connection went idle
        self._timer: asyncio.TimerHandle | None = None

    def idle(self) -> None:
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_later(self._seconds, self._due)

    def busy(self) -> None:
        self._since = None

    def cancel(self) -> None:
        self._since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        if self._since is None:
            return  # busy: the next idle() waits afresh
        left = self._since + self._seconds - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._due)
        else:
            self._expire()


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

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)  # twice a response: not through __getattr__

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
