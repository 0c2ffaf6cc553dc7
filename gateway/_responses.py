"""How the gateway answers: JSON responses, errors, its own pages, and the log line of a failure."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from gateway import _docs
from gateway._errors import GatewayError
from gateway._request import JSON, Scope, Send
from natsmesh import CallError

log = logging.getLogger("natsmesh.gateway")


def json_headers(length: int, extra: Iterable[tuple[bytes, bytes]] = ()) -> list[Any]:
    """The headers of a JSON body of ``length`` bytes."""
    return [(b"content-type", JSON), (b"content-length", str(length).encode()), *extra]


async def send_error(send: Send, error: GatewayError) -> None:
    """Answer ``error`` as its JSON body; close the connection when the request may linger."""
    body = error.body()
    headers = json_headers(len(body), error.headers)
    if error.status in (408, 413, 431) or (error.status == 400 and error.kind == "malformed"):
        # The rest of the request may still be on its way: do not read it as the next one.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_page(
    scope: Scope,
    send: Send,
    page: Callable[[], Awaitable[tuple[int, bytes, bytes]]],
) -> None:
    """Answer one of the gateway's own pages (GET or HEAD only), never cached."""
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(
            send,
            GatewayError(
                405, "method_not_allowed", "method not allowed", headers=((b"allow", b"GET"),)
            ),
        )
        return
    status, content_type, body = await page()
    headers: list[Any] = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if scope["path"] == "/docs":
        headers.append((b"content-security-policy", _docs.CSP))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def log_failure(exc: Exception, error: GatewayError, method: str, labels: list[str]) -> None:
    """One line for a service's 5xx (it logged the details under the trace id named);
    the stack for the gateway's own failures, which no one else logs.
    """
    if isinstance(exc, CallError):
        if error.status >= 500 and error.kind not in _QUIET:
            trace = getattr(exc, "trace_id", None) or "-"
            log.warning(
                "%s %s.%s: %d %s from the service (trace %s)",
                method,
                exc.service,
                exc.endpoint,
                error.status,
                error.kind,
                trace,
            )
    elif error.status == 500:
        log.exception("%s %s failed", method, labels)


# Answers the gateway gives often and on purpose: not worth a log line each.
_QUIET: Final = frozenset({"no_responders", "overloaded", "deadline"})
