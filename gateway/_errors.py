"""Every failure the gateway answers, as an HTTP status and a JSON body.

The body always has one shape, the mesh's own error shape::

    {"error": {"code": 422, "kind": "validation", "message": "...", "details": [...]}}

and never carries a traceback, an exception's repr or the request's input
(validation details are field paths and reasons only). A service's error that
another failure caused (502 ``upstream``) adds ``causes``: one
``{"service", "endpoint", "kind", "code", "message"}`` per hop below, nearest
first, bounded as :class:`natsmesh.RemoteError` bounds them. The mapping:

=====================================  ======  ===========================================
condition                              status  kind
=====================================  ======  ===========================================
a path segment fails the allow-list    400     ``bad_path``
body is not JSON / bad header value    400     ``malformed``
no, or a bad, credential (auth on)     401     ``unauthorized`` (``WWW-Authenticate``)
an identity the route does not allow   403     ``forbidden``
no route (or no such service)          404     ``unknown_route``
the service has no such endpoint       404     ``unknown_endpoint``
the path exists for other methods      405     ``method_not_allowed`` (with ``Allow``)
the request was not read in time       408     ``request_timeout``
body larger than the limit             413     ``too_large``
Content-Type is not JSON               415     ``unsupported_media_type``
the service refused the payload        422     ``validation`` (with ``details``)
too many or too large headers          431     ``headers_too_large``
the service failed / answered badly    500+    the service's code; 502 ``bad_reply``
the instance died with the request     502     ``instance_lost``
no responders                          503     ``no_responders``
overloaded (gateway or service)        503     ``overloaded`` (with ``Retry-After``)
the budget ran out                     504     ``deadline``
=====================================  ======  ===========================================

A service's own error code (``ServiceError(409, ...)``) becomes the HTTP status
when it is one (400..599), else 502.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import pydantic_core

from natsmesh import (
    Cause,
    DeadlineExceeded,
    ErrorKind,
    InstanceLost,
    InvalidName,
    InvalidReply,
    MeshError,
    MessageTooLarge,
    NoResponders,
    Overloaded,
    RemoteError,
    UnknownEndpoint,
)

#: Seconds a client is told to wait before trying again after a 503 "overloaded".
RETRY_AFTER: Final = b"1"
_MAX_DETAILS: Final = 50
_MAX_TEXT: Final = 256


class GatewayError(Exception):
    """An answer other than the service's reply: status, kind, message, details, headers."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Sequence[tuple[bytes, bytes]] = (),
        causes: Sequence[Cause] = (),
    ) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message
        self.details = tuple(details)
        self.headers = tuple(headers)
        self.causes = tuple(causes)

    def body(self) -> bytes:
        return error_body(self.status, self.kind, self.message, self.details, self.causes)


def error_body(
    status: int,
    kind: str,
    message: str,
    details: Sequence[Mapping[str, Any]] = (),
    causes: Sequence[Cause] = (),
) -> bytes:
    """The JSON error body."""
    error: dict[str, Any] = {"code": status, "kind": kind, "message": message}
    if details:
        error["details"] = list(details)
    if causes:
        error["causes"] = [c.as_dict() for c in causes]
    return pydantic_core.to_json({"error": error})


def overloaded(message: str = "overloaded, retry later") -> GatewayError:
    return GatewayError(503, "overloaded", message, headers=((b"retry-after", RETRY_AFTER),))


def from_exception(exc: BaseException) -> GatewayError:
    """The answer for an exception raised by ``Mesh.call`` (anything unknown: a bare 500)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, NoResponders):
        where = f" in subset {exc.subset}" if exc.subset else ""
        return GatewayError(503, "no_responders", f"no responders for {_target(exc)}{where}")
    if isinstance(exc, DeadlineExceeded):
        return GatewayError(504, "deadline", f"deadline exceeded calling {_target(exc)}")
    if isinstance(exc, Overloaded):
        return overloaded(f"{_target(exc)} is overloaded, retry later")
    if isinstance(exc, UnknownEndpoint):
        return GatewayError(404, "unknown_endpoint", f"no endpoint {_target(exc)}")
    if isinstance(exc, RemoteError):
        return _remote(exc)
    if isinstance(exc, InvalidReply):
        return GatewayError(502, "bad_reply", f"{_target(exc)} sent an invalid reply")
    if isinstance(exc, InstanceLost):
        return GatewayError(502, "instance_lost", f"the instance serving {_target(exc)} is gone")
    if isinstance(exc, InvalidName):
        return GatewayError(404, "unknown_route", "no such route")
    if isinstance(exc, OverflowError):  # msgpack carries integers of at most 64 bits
        return GatewayError(400, "malformed", "a number in the body is out of range")
    if isinstance(exc, MessageTooLarge):  # the body limit keeps this from happening
        return GatewayError(413, "too_large", "the request is larger than a NATS message")
    return GatewayError(500, "internal", "internal error")


def _remote(exc: RemoteError) -> GatewayError:
    status = exc.code if 400 <= exc.code <= 599 else 502
    message = _cut(exc.message)
    if exc.kind == ErrorKind.VALIDATION:
        return GatewayError(422, "validation", message, details=_details(exc.details))
    return GatewayError(status, exc.kind or "service", message, causes=exc.causes)


def _details(details: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # Field paths and reasons only, re-built rather than passed through: whatever a
    # service put in its details, no input value reaches the client.
    shown = []
    for detail in details[:_MAX_DETAILS]:
        loc = detail.get("loc")
        shown.append(
            {
                "loc": [_cut(str(p), 64) for p in loc[:32]] if isinstance(loc, list) else [],
                "msg": _cut(str(detail.get("msg", ""))),
                "type": _cut(str(detail.get("type", "")), 64),
            }
        )
    return shown


def _target(exc: MeshError) -> str:
    service = getattr(exc, "service", "")
    endpoint = getattr(exc, "endpoint", "")
    return f"{service}.{endpoint}" if endpoint else str(service)


def _cut(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
