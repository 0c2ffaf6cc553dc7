"""The controller's status view: what every client applied, against the latest (pure).

Clients report the table revisions they applied on every change and every
``interval`` seconds (:class:`~natsmesh.wire._control.StatusReport`), and once more
when they close (``left``): a client that left is dropped at once. One whose
reports stopped without a word (killed, cut off) is ``GONE`` after it missed two
of them, and dropped after ``ttl``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from natsmesh.wire._control import (
    HTTP_KEY,
    HTTP_TABLE,
    SchemaConflict,
    StatusReport,
    StatusRow,
    StatusView,
    registry_key,
    routes_key,
)

__all__ = ["Clients"]

#: A client is GONE once this many of its report intervals passed without a report.
MISSED_REPORTS: Final = 2.5


@dataclass(slots=True)
class _Seen:
    report: StatusReport
    at: float


class Clients:
    """The last report of every client; ``now`` is passed in (``time.monotonic()``)."""

    def __init__(self, *, ttl: float, max_clients: int = 100_000) -> None:
        self.ttl = ttl
        self.max_clients = max_clients
        self._seen: dict[str, _Seen] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def report(self, report: StatusReport, now: float) -> None:
        if report.left:
            self._seen.pop(report.client, None)
        elif report.client in self._seen or len(self._seen) < self.max_clients:
            self._seen[report.client] = _Seen(report, now)

    def expire(self, now: float) -> None:
        """Drop the clients not heard of for ``ttl`` seconds."""
        for client in [c for c, s in self._seen.items() if now - s.at > self.ttl]:
            del self._seen[client]

    def view(
        self, revision: Callable[[str], int], now: float, conflicts: Iterable[SchemaConflict] = ()
    ) -> StatusView:
        """Every client's applied revisions per service against ``revision(key)``."""
        rows = []
        for client, seen in sorted(self._seen.items()):
            report = seen.report
            gone = now - seen.at > MISSED_REPORTS * report.interval
            for service, applied in sorted(report.services.items()):
                # A gateway reports the http table as HTTP_TABLE, its revision as "routes".
                http = service == HTTP_TABLE
                routes_rev = revision(HTTP_KEY if http else routes_key(service))
                registry_rev = 0 if http else revision(registry_key(service))
                state: Literal["SYNCED", "STALE", "REJECTED", "GONE"] = "SYNCED"
                if gone:
                    state = "GONE"
                elif applied.rejected:
                    state = "REJECTED"
                elif applied.routes < routes_rev or applied.registry < registry_rev:
                    state = "STALE"
                rows.append(
                    StatusRow(
                        client=client,
                        kind=report.kind,
                        service=service,
                        applied=max(applied.routes, applied.registry),
                        latest=max(routes_rev, registry_rev),
                        state=state,
                        reason=applied.rejected,
                    )
                )
        return StatusView(rows=tuple(rows), conflicts=tuple(conflicts))
