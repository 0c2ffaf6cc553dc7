"""What a nested call inherits from the request being served: its budget, trace and headers.

The service side's :class:`~natsmesh.services._context.Context` has this shape; the
client states only what it reads, so it never imports the service layer above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from natsmesh.wire._headers import Trace


class Upstream(Protocol):
    """The request a nested call is made for."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def remaining(self) -> float: ...

    @property
    def trace(self) -> Trace: ...
