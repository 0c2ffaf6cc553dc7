"""The natsmesh exception tree and the error codes that cross the wire.

Every exception natsmesh raises derives from :class:`MeshError` (a test checks that
each subclass is drawn here)::

    MeshError
    ├── NatsUnreachable           no NATS server could be reached within the connect timeout
    │   │                         (also a ConnectionError)
    │   └── NatsRefused           a server answered but refused this client's credentials
    ├── CredentialsError          credentials that cannot work: a missing file, half a
    │                             pair, two kinds at once (also a ValueError)
    ├── InvalidName               a service, endpoint or subset name that could become
    │                             a subject wildcard or token (also a ValueError)
    ├── SpecError                 a @service declaration that cannot run (also a TypeError)
    ├── ConfigError               a config file that cannot be used; ``.problems`` lists
    │   │                         each ``path: reason`` (also a ValueError)
    │   ├── RouteConfigError      a route config the controller would refuse
    │   └── PolicyError           an access policy that cannot be compiled (``natsmesh auth``)
    ├── CompileError              a compiled policy's files cannot be written (``natsmesh auth``)
    ├── NatsServerNotFound        no usable nats-server binary (``natsmesh.testing``, ``up``;
    │                             also a RuntimeError)
    ├── NatsServerStartFailed     an embedded nats-server exited or was not ready in time
    │   │                         (also a RuntimeError; ``.log_tail``)
    │   └── NatsPortInUse         its client port is taken by another process
    ├── ServiceError              raised by a handler to reply with its own code and message
    ├── PermissionDenied          the server refused this client's publish (its permissions):
    │                             reported at once, never retried
    ├── MessageTooLarge           a message larger than the server's ``max_payload``
    │                             (also a ValueError)
    └── CallError                 a call failed; carries service, endpoint and subject
        ├── NoResponders          nobody listens on the subject (immediate, never a timeout)
        ├── DeadlineExceeded      the call's budget ran out (also a TimeoutError)
        ├── InstanceLost          the instance that had the request is gone: no reply will come
        ├── InvalidReply          the reply could not be decoded or validated
        └── RemoteError           the service replied with an error code and message
                                  (``.causes``: the chain of failures below it)
            ├── InvalidRequest    400, 413, 415, 422: the service rejected the payload
            ├── UnknownEndpoint   404: the service runs but has no such endpoint
            └── Overloaded        503: shed before processing; safe to retry

Remote failures cross the wire as the NATS micro headers ``Nats-Service-Error``
(message) and ``Nats-Service-Error-Code`` (code), plus ``Mesh-Error-Kind`` (one of
:class:`ErrorKind`), never as ``repr(exc)``. The codes:

====  ======================  ==================================================
code  kind                    meaning
====  ======================  ==================================================
400   malformed               the payload could not be decoded
404   unknown_endpoint        no such endpoint on a running service
413   too_large               the payload exceeds a size, length or count limit
415   unsupported_media_type  the Content-Type is neither msgpack nor JSON
422   validation              the payload decoded but failed validation
500   internal                the handler raised; no internals are sent
502   upstream                a call the handler made failed
503   overloaded              the instance's concurrency limit shed the request
504   deadline                the budget ran out inside the service
====  ======================  ==================================================

A handler's own :class:`ServiceError` carries kind ``service`` and its own code.

An error reply whose handler's nested call failed (502 ``upstream``) carries the
cause chain in its body: one :class:`Cause` (service, endpoint, kind, code,
message) per hop below, nearest first, at most :data:`MAX_CAUSES` of them, each
message cut to :data:`MAX_CAUSE_MESSAGE` characters, so that a hostile service
cannot make it grow on its way up.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final


class ErrorKind(enum.StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION = "validation"
    INTERNAL = "internal"
    UPSTREAM = "upstream"
    OVERLOADED = "overloaded"
    DEADLINE = "deadline"
    SERVICE = "service"


#: The code each kind travels with; ``service`` errors choose their own.
KIND_CODES: Mapping[ErrorKind, int] = {
    ErrorKind.MALFORMED: 400,
    ErrorKind.UNKNOWN_ENDPOINT: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorKind.VALIDATION: 422,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UPSTREAM: 502,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.DEADLINE: 504,
}


class MeshError(Exception):
    """Root of every natsmesh exception."""


class NatsUnreachable(MeshError, ConnectionError):
    """No NATS server at ``url`` accepted a connection within ``waited`` seconds.

    ``url`` has any password or token removed; ``reason`` is the last attempt's error.
    """

    def __init__(self, url: str, *, waited: float, reason: str) -> None:
        super().__init__(self._describe(url, waited, reason))
        self.url = url
        self.waited = waited
        self.reason = reason

    @staticmethod
    def _describe(url: str, waited: float, reason: str) -> str:
        return f"cannot connect to NATS at {url} within {waited:g} s ({reason})"


class NatsRefused(NatsUnreachable):
    """A server at ``url`` answered but refused this client's credentials."""

    @staticmethod
    def _describe(url: str, waited: float, reason: str) -> str:
        return f"NATS at {url} refused this client's credentials ({reason})"


class InvalidName(MeshError, ValueError):
    """A name that is not allowed to become a subject token."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {kind} name {value!r}: {reason}")
        self.kind = kind
        self.value = value
        self.reason = reason


class SpecError(MeshError, TypeError):
    """A service declaration that cannot be run (bad signature, duplicate endpoint)."""


class ServiceError(MeshError):
    """Raise from a handler to answer with this code and message.

    The message is sent to the caller as is: put nothing secret in it.
    """

    def __init__(self, code: int, message: str) -> None:
        if not 100 <= code <= 999:
            raise ValueError(f"error code must be within 100..999, not {code}")
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class CallError(MeshError):
    """A call to ``service.endpoint`` failed."""

    def __init__(self, message: str, *, service: str, endpoint: str, subject: str) -> None:
        super().__init__(message)
        self.service = service
        self.endpoint = endpoint
        self.subject = subject


class NoResponders(CallError):
    """No instance listens on the subject: the server said so at once.

    ``subset`` is the subset last tried, where the call went to one.
    """

    def __init__(
        self, message: str, *, service: str, endpoint: str, subject: str, subset: str | None = None
    ) -> None:
        super().__init__(message, service=service, endpoint=endpoint, subject=subject)
        self.subset = subset


class PermissionDenied(MeshError):
    """The NATS server refused this client's publish to ``subject``: its permissions
    (the mesh access policy) do not allow the call. Reported at once, never retried.
    """

    def __init__(self, subject: str) -> None:
        super().__init__(f"not permitted to publish to {subject}")
        self.subject = subject


class MessageTooLarge(MeshError, ValueError):
    """A message of ``size`` bytes to ``subject``: more than the server's ``max_payload``."""

    def __init__(self, subject: str, size: int, max_payload: int) -> None:
        super().__init__(
            f"a message of {size} bytes to {subject} exceeds the server's max_payload"
            f" ({max_payload} bytes)"
        )
        self.subject = subject
        self.size = size
        self.max_payload = max_payload


class DeadlineExceeded(CallError, TimeoutError):
    """The call's time budget ran out before a reply arrived."""


class InstanceLost(CallError):
    """The instance that received the request is gone (its own subject has no responders
    any more): its reply will never come. The request may or may not have been processed.
    """


class InvalidReply(CallError):
    """The reply could not be decoded or did not validate against the response type."""


MAX_CAUSES: Final = 8
MAX_CAUSE_MESSAGE: Final = 256
_CAUSE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CAUSE_KIND = re.compile(r"[a-z_]{1,32}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class Cause:
    """One hop below a failed call: which call failed there, and how. No internals."""

    service: str
    endpoint: str
    kind: str
    code: int
    message: str

    def __str__(self) -> str:
        return f"{self.service}.{self.endpoint}: {self.code} {self.kind}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "endpoint": self.endpoint,
            "kind": self.kind,
            "code": self.code,
            "message": self.message,
        }

    @classmethod
    def parse(cls, value: object) -> Cause | None:
        """A cause from an error body's ``causes`` entry; None when it is not one."""
        if not isinstance(value, dict):
            return None
        service, endpoint = value.get("service"), value.get("endpoint")
        kind, code, message = value.get("kind"), value.get("code"), value.get("message")
        if not (
            isinstance(service, str)
            and isinstance(endpoint, str)
            and isinstance(kind, str)
            and isinstance(message, str)
            and type(code) is int
            and 100 <= code <= 999
            and _CAUSE_NAME.fullmatch(service)
            and _CAUSE_NAME.fullmatch(endpoint)
            and _CAUSE_KIND.fullmatch(kind)
        ):
            return None
        return cls(service, endpoint, kind, code, clean_message(message))


def clean_message(text: str, limit: int = MAX_CAUSE_MESSAGE) -> str:
    """``text`` on one printable line of at most ``limit`` characters."""
    text = _UNPRINTABLE.sub(" ", text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_causes(value: object) -> tuple[Cause, ...]:
    """The causes of an error body (a list of dicts), bounded; malformed entries skipped."""
    if not isinstance(value, list):
        return ()
    read = MAX_CAUSES * 4  # however many were sent; the last is the root cause
    entries = value if len(value) <= read else [*value[:read], value[-1]]
    parsed = (Cause.parse(v) for v in entries)
    return bound_causes([c for c in parsed if c is not None])


def bound_causes(causes: Sequence[Cause]) -> tuple[Cause, ...]:
    """At most MAX_CAUSES: the nearest ones and, always, the root cause (the last)."""
    if len(causes) <= MAX_CAUSES:
        return tuple(causes)
    return (*causes[: MAX_CAUSES - 1], causes[-1])


class RemoteError(CallError):
    """The service answered with an error code and message.

    ``causes`` is the chain of failures below this one, nearest first (empty when the
    service itself failed): where a handler's nested call failed, its hop, and the
    hops below that. ``str()`` renders the whole chain on one line. ``trace_id`` is
    the W3C trace id the service logged a 5xx failure under (None otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        kind: str,
        service: str,
        endpoint: str,
        subject: str,
        details: Sequence[Mapping[str, Any]] = (),
        causes: Sequence[Cause] = (),
        trace_id: str | None = None,
    ) -> None:
        super().__init__(f"{code} {message}", service=service, endpoint=endpoint, subject=subject)
        self.code = code
        self.message = message
        self.kind = kind
        self.details = tuple(details)
        self.causes = bound_causes(causes)
        self.trace_id = trace_id  # the trace the service logged the failure under (5xx)

    def __str__(self) -> str:
        head = f"{self.code} {self.message}"
        if not self.causes:
            return head
        return f"{head} (caused by {' <- '.join(str(c) for c in self.causes)})"


class InvalidRequest(RemoteError):
    """The service rejected the request payload (400, 413, 415 or 422)."""


class UnknownEndpoint(RemoteError):
    """The service runs, but has no endpoint of that name (404)."""


class Overloaded(RemoteError):
    """The instance shed the request before processing it (503); safe to retry."""


_REMOTE_CLASSES: Mapping[str, type[RemoteError]] = {
    ErrorKind.MALFORMED: InvalidRequest,
    ErrorKind.TOO_LARGE: InvalidRequest,
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: InvalidRequest,
    ErrorKind.VALIDATION: InvalidRequest,
    ErrorKind.UNKNOWN_ENDPOINT: UnknownEndpoint,
    ErrorKind.OVERLOADED: Overloaded,
}


def remote_error_class(kind: str) -> type[RemoteError]:
    """The exception class a caller raises for an error reply of this kind."""
    return _REMOTE_CLASSES.get(kind, RemoteError)


def causes_of(exc: CallError) -> tuple[Cause, ...]:
    """The cause chain an error reply carries when a handler's nested call failed with ``exc``.

    Its first hop is ``exc`` itself (the call that failed), then the chain ``exc``
    brought from below, bounded.
    """
    below: tuple[Cause, ...] = ()
    if isinstance(exc, RemoteError):
        kind, code, message, below = (
            exc.kind or ErrorKind.SERVICE,
            exc.code,
            exc.message,
            exc.causes,
        )
    elif isinstance(exc, NoResponders):
        kind, code, message = "no_responders", 503, str(exc)
    elif isinstance(exc, DeadlineExceeded):
        kind, code, message = ErrorKind.DEADLINE, 504, str(exc)
    elif isinstance(exc, InstanceLost):
        kind, code, message = "instance_lost", 502, str(exc)
    elif isinstance(exc, InvalidReply):
        kind, code, message = "invalid_reply", 502, str(exc)
    else:
        kind, code, message = "call_failed", 502, str(exc)
    service = exc.service if _CAUSE_NAME.fullmatch(exc.service) else "unknown"
    endpoint = exc.endpoint if _CAUSE_NAME.fullmatch(exc.endpoint) else "unknown"
    kind = kind if _CAUSE_KIND.fullmatch(kind) else "service"
    code = code if 100 <= code <= 999 else 502
    return bound_causes([Cause(service, endpoint, kind, code, clean_message(message)), *below])
