"""A call's values (:class:`Call`) and its progress (:class:`Running`), as the
attempt loop and the sends share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from natsmesh.client._targets import Route
from natsmesh.traffic._planner import PLAIN, CallState, Start
from natsmesh.traffic._traffic import ServiceTraffic
from natsmesh.wire._control import RegistryTable


class Call(NamedTuple):
    """Everything one call needs, decided before the first send.

    A named tuple, not a frozen dataclass: as immutable, and half the cost to
    build, which on a path of a few microseconds per call counts.
    """

    target: str  # "service.endpoint", as the caller named it
    route: Route
    payload: object
    body: bytes  # ``payload`` encoded for ``route``'s codec
    deadline: float
    headers: dict[str, str]  # the caller's own, checked
    traceparent: str | None  # None: the call continues no trace
    upstream_retries: bool  # an upstream hop already retries this request


@dataclass(slots=True, kw_only=True)
class Running(CallState):
    """A call under way: the planner's state plus what the loop sends with."""

    call: Call
    route: Route
    body: bytes
    traffic: ServiceTraffic
    registry: RegistryTable | None
    retrying: bool = False  # retries here may repeat work: say so downstream
    per_try: float | None = None
    key: str | None = None  # the hash key, for hash mode
    begin: Start = field(default=PLAIN)
