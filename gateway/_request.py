"""Reading one HTTP request within limits: its headers, its body, its JSON payload.

Pure of the mesh: the ASGI app (:mod:`gateway._app`) calls these on its way to
``Mesh.call``; every refusal is a :class:`GatewayError` with its status.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

import pydantic_core

from gateway._directory import EndpointDoc
from gateway._errors import GatewayError
from gateway._limits import GatewayLimits
from gateway._paths import Match
from gateway._schemas import coerce, coerce_all

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The budget header an HTTP client may send: whole milliseconds, capped by the route.
BUDGET_HEADER: Final = "x-request-timeout-ms"
MAX_BUDGET_MS: Final = 3600 * 1000
JSON: Final = b"application/json"
#: About how deep pydantic-core's JSON parser nests arrays and objects before it refuses.
JSON_DEPTH: Final = 200
_MAX_FORWARDED_VALUE: Final = 1024
# Header names no client may forward, whatever the allow-list says: the mesh's own
# (budget, attempt, caller, retrying, errors), NATS's, and what the mesh sets itself.
_NEVER_FORWARD: Final = ("mesh-", "nats-")
_RESERVED: Final = frozenset({"traceparent", "tracestate", "content-type", "status"})


class Disconnected(Exception):
    """The client went away before its request was read."""


class Head:
    """What one pass over the request headers found."""

    __slots__ = (
        "budget",
        "content_length",
        "content_type",
        "credentials",
        "forwarded",
        "traceparent",
    )

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.content_type: bytes | None = None
        self.budget: float | None = None
        self.traceparent: str | None = None
        self.forwarded: dict[str, str] = {}
        self.credentials: list[tuple[bytes, bytes]] = []

    @classmethod
    def read(
        cls,
        headers: Iterable[tuple[bytes, bytes]],
        forward: Mapping[bytes, str],
        limits: GatewayLimits,
        *,
        credentials: frozenset[bytes] = frozenset(),
    ) -> Head:
        """One pass over the headers; ``credentials`` names the fields kept for the auth check.

        Only what is read here goes on: the mesh's own headers (``Mesh-Caller``,
        ``Mesh-Budget-Ms``, ``Mesh-Attempt``, ``Mesh-Retrying``, ``Nats-*``) and
        anything else not allow-listed are dropped, whatever their case.
        """
        head = cls()
        count = size = 0
        for name, value in headers:
            count += 1
            size += len(name) + len(value)
            if name == b"content-length":
                head.content_length = _content_length(value, head.content_length)
            elif name == b"content-type":
                head.content_type = value
            elif name == b"traceparent":
                head.traceparent = value.decode("latin-1")
            elif name == b"x-request-timeout-ms":
                head.budget = _budget(value)
            elif name in credentials:
                head.credentials.append((name, value))
            elif name in forward:
                if len(value) > _MAX_FORWARDED_VALUE or b"\0" in value:
                    raise GatewayError(
                        431, "headers_too_large", f"header {name.decode()} is too long or invalid"
                    )
                head.forwarded[forward[name]] = value.decode("latin-1")
        _within(count, size, limits)
        return head


def check_head(headers: Iterable[tuple[bytes, bytes]], limits: GatewayLimits) -> None:
    """Refuse (431) a head with too many or too large fields: the gateway's pages read none."""
    count = size = 0
    for name, value in headers:
        count += 1
        size += len(name) + len(value)
    _within(count, size, limits)


def _within(count: int, size: int, limits: GatewayLimits) -> None:
    if count > limits.max_headers or size > limits.max_header_bytes:
        raise GatewayError(431, "headers_too_large", "too many or too large request headers")


def _content_length(value: bytes, seen: int | None) -> int:
    if not value.isdigit() or len(value) > 15:
        raise GatewayError(400, "malformed", "invalid Content-Length")
    length = int(value)
    if seen is not None and seen != length:
        raise GatewayError(400, "malformed", "conflicting Content-Length headers")
    return length


def _budget(value: bytes) -> float:
    if not value.isdigit() or len(value) > 10 or not 0 < int(value) <= MAX_BUDGET_MS:
        raise GatewayError(
            400, "malformed", f"{BUDGET_HEADER} must be whole milliseconds, 1 to {MAX_BUDGET_MS}"
        )
    return int(value) / 1000.0


def allow_list(names: Iterable[str], *, secret: Iterable[bytes] = ()) -> dict[bytes, str]:
    """The forwarded headers, by their lower-case wire name.

    Refuses (ValueError) the mesh's own, and the ``secret`` ones: the headers that
    carry credentials, which must not reach services.
    """
    never = frozenset(secret)
    allowed: dict[bytes, str] = {}
    for name in names:
        lowered = name.lower()
        if (
            not lowered
            or len(lowered) > 128
            or not all(c.isascii() and (c.isalnum() or c in "-_") for c in lowered)
        ):
            raise ValueError(f"invalid header name to forward: {name!r}")
        if lowered.startswith(_NEVER_FORWARD) or lowered in _RESERVED or lowered == BUDGET_HEADER:
            raise ValueError(f"header {name!r} is the mesh's own and is never forwarded")
        if lowered.encode() in never:
            raise ValueError(f"header {name!r} carries credentials and is never forwarded")
        allowed[lowered.encode()] = lowered
    return allowed


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole body, refusing at once what is announced or grows beyond ``limit``.

    No timer here: the server's protocol gives the whole request, head and body,
    ``read_timeout`` (see :mod:`gateway._protocol`), and a client too slow for it
    shows up as a disconnect.
    """
    if declared is not None and declared > limit:
        raise GatewayError(413, "too_large", f"request body larger than {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if message.get("more_body") or message["type"] != "http.request" or len(body) > limit:
        return await _read_more(receive, message, limit)
    return body  # nearly always: the whole body in one message


async def _read_more(receive: Receive, message: Message, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "too_large", f"request body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


def _is_json(content_type: bytes) -> bool:
    if content_type == JSON:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON or media.endswith(b"+json")


def payload_of(
    body: bytes,
    head: Head,
    found: Match,
    doc: EndpointDoc | None,
    query_string: bytes,
    limits: GatewayLimits,
) -> Any:
    """The request's JSON body, with the path and query parameters merged into it."""
    payload: Any = None
    if body:
        if head.content_type is not None and not _is_json(head.content_type):
            raise GatewayError(415, "unsupported_media_type", "send the body as application/json")
        try:
            payload = pydantic_core.from_json(body, allow_inf_nan=False)
        except ValueError as exc:
            if "recursion limit" in str(exc):
                raise GatewayError(
                    413,
                    "too_large",
                    f"the body is nested deeper than the JSON parser's limit of {JSON_DEPTH}"
                    " levels",
                ) from None
            raise GatewayError(400, "malformed", "the body is not valid JSON") from None
    if not found.params and not query_string:
        return payload
    if payload is None:
        payload = {}
    elif not isinstance(payload, dict):
        raise GatewayError(
            400, "malformed", "with path or query parameters, the body must be a JSON object"
        )
    props = doc.properties if doc is not None else {}
    if query_string:
        try:
            pairs = urllib.parse.parse_qsl(
                query_string.decode("latin-1"),
                keep_blank_values=True,
                max_num_fields=limits.max_query_params,
            )
        except ValueError:
            raise GatewayError(
                400, "malformed", f"more than {limits.max_query_params} query parameters"
            ) from None
        grouped: dict[str, list[str]] = {}
        for name, value in pairs:
            grouped.setdefault(name, []).append(value)
        for name, values in grouped.items():
            payload[name] = coerce_all(values, props.get(name))
    for name, value in found.params.items():
        payload[name] = coerce(value, props.get(name))
    return payload
