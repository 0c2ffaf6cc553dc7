"""A call's values (:class:`Call`) and its progress (:class:`Running`), as the
attempt loop and the sends share them.
"""

from __future__ import annotations

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


class Running:
    """A call under way: what every try sends with, and (after a first failure) the
    planner's :class:`CallState`.

    A plain class with slots, built once per call: the planner's state is built only
    when a try fails, so that a call answered at once costs no more than it must.
    """

    __slots__ = (
        "attempts",
        "begin",
        "body",
        "call",
        "idempotent",
        "key",
        "per_try",
        "registry",
        "retrying",
        "route",
        "state",
        "traffic",
    )

    def __init__(
        self,
        call: Call,
        traffic: ServiceTraffic,
        registry: RegistryTable | None,
        attempts: int,
        idempotent: bool,
        retrying: bool,
        per_try: float | None,
        key: str | None,
    ) -> None:
        self.call = call
        self.route = call.route
        self.body = call.body
        self.traffic = traffic
        self.registry = registry
        self.attempts = attempts
        self.idempotent = idempotent
        self.retrying = retrying  # retries here may repeat work: say so downstream
        self.per_try = per_try
        self.key = key  # the hash key, for hash mode
        self.begin: Start = PLAIN
        self.state: CallState | None = None

    def planned(self) -> CallState:
        """The planner's state of this call, built at its first failure."""
        state = self.state
        if state is None:
            policy = self.traffic.policy
            state = self.state = CallState(
                attempts=self.attempts,
                idempotent=self.idempotent,
                retry_on=policy.retries.retry_on,
                chain=self.begin.chain,
                queue=self.registry is not None and policy.load_balancer == "queue",
                can_reroute=True,
            )
        return state

    @property
    def chain(self) -> tuple[str | None, ...] | list[str | None]:
        return self.begin.chain

    @property
    def position(self) -> int:
        return 0 if self.state is None else self.state.position

    @property
    def subset(self) -> str | None:
        """The subset of the latest try (None: the service's queue group, no subsets)."""
        return self.begin.chain[0] if self.state is None else self.state.subset
