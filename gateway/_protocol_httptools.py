"""The httptools flavour of :mod:`gateway._protocol` (imported only where httptools is).

httptools (llhttp) has no limit of its own on the request head: it keeps a
header's pieces until the header ends. This one counts the bytes of a head that
is not complete yet and refuses it (431, the connection closed) once they pass
``max_header_bytes``. The app counts the fields and bytes of complete heads.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway._limits import GatewayLimits
from gateway._protocol import (
    Lingering,
    OneSend,
    _after_data,
    _HeadDeadline,
    no_delay,
    raw_response,
)

# The request line and the separators, beyond the URL and header bytes counted.
_SLACK = 1024


class LimitedHttpTools(HttpToolsProtocol):
    """httptools with a deadline on every request head, a bound on its size, a lingering close."""

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
            self.transport.write(raw_response(431, "headers_too_large", "request head too large"))
            self.transport.close()
