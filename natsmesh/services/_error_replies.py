"""The service side of a failed request: the error reply it answers, the line it logs.

Error replies carry the NATS micro headers (``Nats-Service-Error``,
``Nats-Service-Error-Code``), ``Mesh-Error-Kind``, the instance that answered, and
for a 5xx the trace it was logged under (``traceresponse``); the body is
``{"error": {"code", "kind", "message", "details"?, "causes"?}}`` in the request's
codec. A handler's own exception is logged here with its stack; a nested call's
failure is logged once, one line, by the service where it began (see
:meth:`ErrorReplies.failed_call`), and travels up as ``causes``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import pydantic

from natsmesh.services._context import Context
from natsmesh.services._describe import EndpointState
from natsmesh.transport._transport import Msg, Requester
from natsmesh.wire import _codec, _headers
from natsmesh.wire._codec import Codec
from natsmesh.wire._errors import (
    KIND_CODES,
    CallError,
    Cause,
    ErrorKind,
    RemoteError,
    causes_of,
    clean_message,
)
from natsmesh.wire._headers import Trace, new_trace

log = logging.getLogger("natsmesh.service")

__all__ = ["ErrorReplies", "validation_details"]


class Recorder(Protocol):
    """Where a failed request is kept for observers (``ServeObserver.failed``)."""

    def __call__(
        self,
        endpoint: str,
        code: int,
        kind: str,
        message: str,
        causes: tuple[Cause, ...],
        headers: dict[str, str] | None,
        trace: Trace | None,
    ) -> None: ...


class ErrorReplies:
    """Error replies and logs of one service instance."""

    def __init__(
        self,
        replies: Requester,
        *,
        service: str,
        instance_id: str,
        record: Recorder | None = None,
    ) -> None:
        self._replies = replies
        self._service = service
        self._id = instance_id
        self._record = record

    async def send(
        self,
        msg: Msg,
        ep: EndpointState,
        codec: Codec,
        kind: ErrorKind,
        message: str,
        details: list[dict[str, Any]] | None = None,
        *,
        code: int | None = None,
        causes: tuple[Cause, ...] = (),
        trace: Trace | None = None,
    ) -> None:
        """Count the error in the endpoint's stats and answer it (if a reply is wanted)."""
        code = code if code is not None else KIND_CODES[kind]
        ep.error(code, message)
        if self._record is not None:
            self._record(ep.spec.name, code, kind.value, message, causes, msg.headers, trace)
        if not msg.reply:
            return
        body: dict[str, Any] = {"code": code, "kind": kind.value, "message": message}
        if details:
            body["details"] = details
        if causes:
            body["causes"] = [c.as_dict() for c in causes]
        headers = {
            _headers.ERROR: message,
            _headers.ERROR_CODE: str(code),
            _headers.ERROR_KIND: kind.value,
            _headers.INSTANCE: self._id,
        }
        if trace is not None:
            headers[_headers.TRACERESPONSE] = trace.child().header()
        if codec is Codec.JSON:
            headers[_codec.CONTENT_TYPE] = _codec.JSON_TYPE
        await self._replies.publish(msg.reply, _codec.encode({"error": body}, codec), headers)

    async def failed_call(
        self, msg: Msg, ep: EndpointState, codec: Codec, exc: CallError, context: Context | None
    ) -> None:
        """A nested call of the handler failed: 502 ``upstream``, with its causes.

        Logged in one line where the failure began, not where it only passes
        through: an upstream error carries its causes, and a service's own internal
        error was logged (with its stack) by that service.
        """
        trace = _trace_of(msg.headers, context)
        if not (isinstance(exc, RemoteError) and exc.kind in _RELAYED):
            log.warning(
                "%s.%s: call to %s.%s failed: %s (trace %s)",
                self._service,
                ep.spec.name,
                exc.service,
                exc.endpoint,
                clean_message(str(exc), 512),
                trace.trace_id,
            )
        message = f"call to {exc.service}.{exc.endpoint} failed"
        await self.send(
            msg, ep, codec, ErrorKind.UPSTREAM, message, causes=causes_of(exc), trace=trace
        )

    async def internal(
        self, msg: Msg, ep: EndpointState, codec: Codec, context: Context | None
    ) -> None:
        """The handler raised: its stack in the log (call from the ``except`` block), a
        bare 500 to the caller.
        """
        trace = _trace_of(msg.headers, context)
        log.exception(
            "%s.%s: handler failed (trace %s)", self._service, ep.spec.name, trace.trace_id
        )
        await self.send(msg, ep, codec, ErrorKind.INTERNAL, "internal error", trace=trace)


_RELAYED = (ErrorKind.UPSTREAM, ErrorKind.INTERNAL)


def _trace_of(headers: dict[str, str] | None, context: Context | None) -> Trace:
    """The trace of a request that failed: the handler's, the caller's, or a new one."""
    if context is not None:
        return context.trace
    return _headers.parse_traceparent((headers or {}).get(_headers.TRACEPARENT)) or new_trace()


def validation_details(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    """Field paths and reasons only: echoing the input could reflect hostile data."""
    return [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
