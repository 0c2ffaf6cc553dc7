"""The headers natsmesh reads and writes, and the small values they carry.

Request headers: the remaining time budget in whole milliseconds (relative, so
clocks need not agree; each hop measures from when it received the request),
the W3C ``traceparent``, the attempt number and the caller's identity. Error
replies carry the NATS micro headers plus ``Mesh-Error-Kind``.

A header that would carry its default is not sent (every header costs a parse in
the callee, and in nats-server for ``traceparent``):

- no ``Mesh-Attempt``: the first attempt (1);
- no ``traceparent``: the call continues no trace, and the callee starts one, as
  W3C Trace Context asks of a request without one (a nested call, or the gateway
  given a client's ``traceparent``, always sends it);
- no ``Mesh-Budget-Ms`` (a request from outside the mesh): the service's default budget;
- no ``Mesh-Retrying``: no upstream hop retries this request.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

BUDGET: Final = "Mesh-Budget-Ms"
ATTEMPT: Final = "Mesh-Attempt"
CALLER: Final = "Mesh-Caller"
TRACEPARENT: Final = "traceparent"
# On 5xx error replies only: the trace the failure was logged under (W3C Trace Context
# Level 2's response header), so a front door's log line names the same trace id.
TRACERESPONSE: Final = "traceresponse"
ERROR: Final = "Nats-Service-Error"
ERROR_CODE: Final = "Nats-Service-Error-Code"
ERROR_KIND: Final = "Mesh-Error-Kind"
# On error replies only (successes stay lean): which instance answered, so a caller
# in queue mode can report an outlier it did not choose.
INSTANCE: Final = "Mesh-Instance"
STATUS: Final = "Status"  # set by the server on "no responders" (503)
# Set by a caller that retries: the callee's own calls then do not retry, so
# retries do not multiply hop by hop down a call chain.
RETRYING: Final = "Mesh-Retrying"

#: Headers the mesh owns: user-supplied headers may not override them.
RESERVED: Final = frozenset(
    h.lower()
    for h in (
        BUDGET,
        ATTEMPT,
        CALLER,
        RETRYING,
        TRACEPARENT,
        TRACERESPONSE,
        ERROR,
        ERROR_CODE,
        ERROR_KIND,
        INSTANCE,
        STATUS,
        "Content-Type",  # the mesh picks the codec; a caller's label could contradict the body
    )
)
MAX_HEADER_VALUE: Final = 1024
MAX_BUDGET_MS: Final = 24 * 3600 * 1000

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")


def parse_budget(value: str | None) -> float | None:
    """Seconds left from a budget header; None when absent or unreadable.

    Zero or a negative number means the budget is already spent.
    """
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        return None
    return min(ms, MAX_BUDGET_MS) / 1000.0


def format_budget(seconds: float) -> str:
    # Rounded down: promising more time than is left would let the callee overrun.
    return str(max(0, int(seconds * 1000)))


def parse_attempt(value: str | None) -> int:
    if value is None or not value.isdigit() or len(value) > 4:
        return 1
    return max(1, int(value))


@dataclass(frozen=True, slots=True)
class Trace:
    trace_id: str
    span_id: str
    flags: str = "01"

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> Trace:
        return Trace(self.trace_id, _span_id(), self.flags)


def parse_traceparent(value: str | None) -> Trace | None:
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return Trace(match[1], match[2], match[3])


def new_trace() -> Trace:
    return Trace(f"{random.getrandbits(128):032x}", _span_id())


def _span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def check_user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Validate caller-supplied headers: plain token names, no CR/LF/NUL, no mesh-owned names."""
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        if name.lower() in RESERVED:
            raise ValueError(f"header {name!r} is set by the mesh")
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            raise ValueError(f"header {name!r}: value must be a string of at most 1024 characters")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: value must not contain CR, LF or NUL")
        checked[name] = value
    return checked
