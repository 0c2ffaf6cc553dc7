"""What a handler knows about the request it is serving.

A handler that declares a parameter annotated ``Context`` receives one. Its
``mesh`` makes nested calls that inherit the remaining budget and the trace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from natsmesh.wire._headers import (
    ATTEMPT,
    CALLER,
    TRACEPARENT,
    Trace,
    new_trace,
    parse_attempt,
    parse_traceparent,
)
from natsmesh.wire._subjects import caller_of

if TYPE_CHECKING:
    from natsmesh.client._client import Mesh


class Context:
    """The request's headers, remaining time budget, caller and trace.

    ``deadline`` is a ``time.monotonic()`` instant: budgets travel as relative
    milliseconds, so the clocks of caller and callee never need to agree.
    """

    __slots__ = (
        "_mesh",
        "_secured",
        "_subject",
        "_trace",
        "deadline",
        "endpoint",
        "headers",
        "service",
    )

    def __init__(
        self,
        *,
        service: str,
        endpoint: str,
        headers: Mapping[str, str],
        deadline: float,
        mesh: Mesh | None,
        trace: Trace | None = None,
        subject: str = "",
        secured: bool = False,
    ) -> None:
        self._subject = subject
        self._secured = secured
        self.service = service
        self.endpoint = endpoint
        self.headers = headers
        self.deadline = deadline
        self._mesh = mesh
        self._trace = trace

    # Parsed on first use: most handlers never look, and the request path is hot.
    @property
    def trace(self) -> Trace:
        """The W3C trace context of this request (a new trace if the caller sent none)."""
        if self._trace is None:
            self._trace = parse_traceparent(self.headers.get(TRACEPARENT)) or new_trace()
        return self._trace

    @property
    def caller(self) -> str | None:
        """Who called. Under a compiled access policy, the identity the request's
        subject names (``..._c.<identity>``, which only that identity may publish);
        otherwise (dev mode, ``nats req``, foreign clients on the plain subject) what
        the ``Mesh-Caller`` header says, which anyone can write: see
        :attr:`caller_verified`.
        """
        named = caller_of(self._subject)
        if self._secured and named is not None:
            return named
        return self.headers.get(CALLER) or named

    @property
    def caller_verified(self) -> bool:
        """Whether nats-server vouches for :attr:`caller`: it came from the subject and
        this service runs under a compiled access policy (never in dev mode)."""
        return self._secured and caller_of(self._subject) is not None

    @property
    def on_behalf_of(self) -> str | None:
        """Whom a verified caller says it acts for (its ``Mesh-Caller``, e.g. the end
        user the gateway authenticated); vouched for by that caller only. None when
        the caller is not verified or says nothing beyond its own name."""
        if not self.caller_verified:
            return None
        claimed = self.headers.get(CALLER)
        return claimed if claimed != caller_of(self._subject) else None

    @property
    def attempt(self) -> int:
        """1 for the first try, 2 for the first retry, ..."""
        return parse_attempt(self.headers.get(ATTEMPT))

    @property
    def remaining(self) -> float:
        """Seconds left in the budget; 0.0 once it is spent."""
        return max(0.0, self.deadline - time.monotonic())

    @property
    def mesh(self) -> Mesh:
        """A client for nested calls that inherits this request's budget and trace."""
        if self._mesh is None:
            raise RuntimeError("this context has no mesh client")
        return self._mesh.bound(self)
