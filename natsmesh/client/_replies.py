"""Payloads to request bodies, and replies to results or the errors they carry.

The client's side of the wire, done once per call by ``Mesh``: the attempt loop
only sends bodies and hands back raw replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pydantic
import pydantic_core

from natsmesh.client._targets import Route
from natsmesh.transport._transport import Msg
from natsmesh.wire import _codec, _headers
from natsmesh.wire._codec import Codec, DecodeError, Limits
from natsmesh.wire._errors import (
    CallError,
    Cause,
    DeadlineExceeded,
    ErrorKind,
    InvalidReply,
    parse_causes,
    remote_error_class,
)

# Error bodies larger than this are not read for details and causes (the headers suffice).
_MAX_ERROR_BODY: Final = 64 * 1024


# Tuples, not unions: ``bytes | bytearray`` in an isinstance builds a union on every call.
_RAW = (bytes, bytearray, memoryview)
_PLAIN = (dict, list, str, int, float, bool)


def encode_payload(payload: Any, codec: Codec) -> bytes:
    """The request body of ``payload`` (a model, JSON-able values, or raw bytes)."""
    if isinstance(payload, _RAW):
        return bytes(payload)
    if payload is None:
        return b""
    if codec is Codec.JSON:
        return pydantic_core.to_json(payload)
    if isinstance(payload, pydantic.BaseModel):
        payload = payload.__pydantic_serializer__.to_python(payload, mode="json")
    elif not isinstance(payload, _PLAIN):
        payload = pydantic_core.to_jsonable_python(payload)
    return _codec.encode(payload, codec)


def error_code(hdrs: Mapping[str, str]) -> int:
    """An error reply's code; 500 for one that is missing or not a 3-digit number."""
    raw = hdrs.get(_headers.ERROR_CODE, "")
    return int(raw) if raw.isdigit() and len(raw) < 4 else 500


def decode_reply(route: Route, msg: Msg, response: Any, limits: Limits) -> Any:
    """The result a reply carries, validated as ``response``; raises the error it carries."""
    hdrs = msg.headers
    if hdrs and _headers.ERROR_CODE in hdrs:
        raise remote_error(route, hdrs, msg.data, limits)
    if response is bytes:
        return msg.data
    try:
        value = _codec.decode(msg.data, route.codec, limits)
        if response is None:
            return value
        # The adapter's own validator: TypeAdapter.validate_python only adds defaults.
        return _adapter(response).validator.validate_python(value)
    except (DecodeError, pydantic.ValidationError) as exc:
        raise InvalidReply(
            f"invalid reply from {route.service}.{route.endpoint}: {_reason(exc)}",
            service=route.service,
            endpoint=route.endpoint,
            subject=route.subject,
        ) from None


_adapters: dict[Any, pydantic.TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> pydantic.TypeAdapter[Any]:
    adapter = _adapters.get(kind)
    if adapter is None:
        adapter = _adapters[kind] = pydantic.TypeAdapter(kind)
    return adapter


def remote_error(route: Route, hdrs: Mapping[str, str], data: bytes, limits: Limits) -> CallError:
    """The exception an error reply stands for."""
    code = error_code(hdrs)
    message = hdrs.get(_headers.ERROR, "")[:1024] or "error"
    kind = hdrs.get(_headers.ERROR_KIND, "")
    if kind == ErrorKind.DEADLINE:
        # The budget ran out downstream: to the caller that is the same condition.
        return DeadlineExceeded(
            f"deadline exceeded inside {route.service}.{route.endpoint}",
            service=route.service,
            endpoint=route.endpoint,
            subject=route.subject,
        )
    details: list[dict[str, Any]] = []
    causes: tuple[Cause, ...] = ()
    # Only bodies that carry more than the headers say, and only small ones: an error
    # body's details and causes are bounded, whatever a service sends.
    if kind in (ErrorKind.VALIDATION, ErrorKind.UPSTREAM) and len(data) <= _MAX_ERROR_BODY:
        try:
            error = _codec.decode(data, route.codec, limits)["error"]
            found = error.get("details")
            if isinstance(found, list):
                details = [d for d in found if isinstance(d, dict)][:100]
            causes = parse_causes(error.get("causes"))
        except (DecodeError, KeyError, TypeError, AttributeError):
            pass
    return remote_error_class(kind)(
        message,
        code=code,
        kind=kind,
        service=route.service,
        endpoint=route.endpoint,
        subject=route.subject,
        details=details,
        causes=causes,
        trace_id=_trace_id(hdrs.get(_headers.TRACERESPONSE)),
    )


def _trace_id(value: str | None) -> str | None:
    trace = _headers.parse_traceparent(value) if value else None
    return None if trace is None else trace.trace_id


def _reason(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'value'}: {first['msg']}"
    return str(exc)


def call_headers(headers: Mapping[str, str] | None, caller: str | None) -> dict[str, str]:
    """A call's own headers, checked; raises ValueError for a bad one."""
    extra = _headers.check_user_headers(headers) if headers else {}
    if caller is not None:
        # After the check, which refuses Mesh-Caller among the user's headers, so only
        # this keyword can name the caller; the call's headers are laid over the
        # defaults (the client's name) when the request is sent.
        extra[_headers.CALLER] = check_caller(caller)
    return extra


MAX_CALLER: Final = 256


def check_caller(caller: str) -> str:
    # Printable ASCII: nats-py writes header values as UTF-8 but may read them back
    # through an email parser; CR/LF would end the header, spaces at the ends are
    # stripped. The value itself is not shown: it may come from a token.
    if (
        not isinstance(caller, str)
        or not 0 < len(caller) <= MAX_CALLER
        or not (caller.isascii() and caller.isprintable())
        or caller != caller.strip()
    ):
        raise ValueError(
            f"caller must be printable ASCII, 1 to {MAX_CALLER} characters,"
            " without spaces at either end"
        )
    return caller
