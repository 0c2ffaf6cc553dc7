"""What one HTTP request may cost the gateway: sizes, counts and times (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Room left in a NATS message for the mesh's headers and the subject.
_HEADROOM: Final = 4096
#: msgpack can be larger than the JSON it comes from: "1.5," (4 bytes) is a 9-byte float.
_MSGPACK_GROWTH: Final = 2.25


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds on every request; the defaults suit a public endpoint.

    ``max_body`` is lowered further, when the gateway connects, so that any body
    within it still fits the server's ``max_payload`` once encoded as msgpack.
    """

    max_body: int = 256 * 1024  # bytes of request body (chunked bodies included)
    max_headers: int = 64  # header fields in one request
    max_header_bytes: int = 16 * 1024  # names and values of all header fields, and the URL
    read_timeout: float = 10.0  # seconds to receive a request's head, and then its body
    max_concurrency: int = 1024  # requests handled at once; more get a fast 503
    max_query_params: int = 32

    def __post_init__(self) -> None:
        for name in ("max_body", "max_headers", "max_header_bytes", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_query_params < 0:
            raise ValueError("max_query_params must not be negative")
        if not 0 < self.read_timeout <= 3600:
            raise ValueError("read_timeout must be within (0, 3600] seconds")

    def body_limit(self, max_payload: int | None) -> int:
        """``max_body``, capped so that its msgpack encoding fits ``max_payload``."""
        if max_payload is None or max_payload <= 0:
            return self.max_body
        fits = int(max(0, max_payload - _HEADROOM) / _MSGPACK_GROWTH)
        return max(1, min(self.max_body, fits))
