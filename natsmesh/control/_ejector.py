"""The controller's side of queue-mode outlier ejection: reports in, ejections out (pure).

In queue mode NATS picks the instance, so a caller cannot avoid a bad one; it
reports it instead (:class:`~natsmesh.wire._control.OutlierReport`), and the
controller may tell the instance to leave its queue groups for a while
(:class:`~natsmesh.wire._control.EjectCommand`). One caller's word is not enough,
since a noisy or malicious caller must not be able to drain a service:

- **quorum**: within ``window`` seconds, at least ``min_reporters`` distinct
  callers, and at least ``caller_share`` of the callers reporting anything about
  the service, must have reported the instance;
- **cap**: never more than the route's ``outlier.max_ejection_percent`` of the
  service's instances out at once (so never the last one);
- **growing periods**: ``outlier.base_ejection`` times the number of ejections
  (at most 10 times), back to one once the instance stayed healthy for ten
  base periods;
- only instances the registry knows, and natsmesh ones (a plain micro service
  cannot be told to leave).

Reporter names come from the report's subject (``_ctl.outlier.<svc>.<identity>``),
never its body: NATS does not tell a subscriber who published, but the access
policy lets each identity publish only under its own name, and only about the
services it calls. Many connections of one identity are one reporter; the
population is the instances known from their own announcements, so nobody can
dilute it with fakes; and the cap bounds what any set of reporters can do.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from natsmesh.traffic._routes import Outlier
from natsmesh.wire._control import EjectCommand, OutlierReport

MAX_REPORTERS = 256  # per instance: enough for a quorum, bounded against floods
MAX_TRACKED = 10_000  # instances with state, across services


@dataclass(slots=True)
class _State:
    reporters: dict[str, float] = field(default_factory=dict)  # caller -> last report
    ejections: int = 0
    until: float = 0.0


@dataclass(slots=True)
class Counters:
    reports: int = 0
    ignored: int = 0  # unknown instance, already out, or a standby's
    capped: int = 0  # a quorum was reached but the cap said no
    ejections: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "outlier_reports": self.reports,
            "outlier_reports_ignored": self.ignored,
            "ejections_capped": self.capped,
            "queue_ejections": self.ejections,
        }


class Ejector:
    """Outlier reports per instance, and which instances are out of their queue groups."""

    def __init__(
        self, *, window: float = 30.0, min_reporters: int = 2, caller_share: float = 0.5
    ) -> None:
        if window <= 0 or min_reporters < 1 or not 0 <= caller_share <= 1:
            raise ValueError("need window > 0, min_reporters >= 1, 0 <= caller_share <= 1")
        self.window = window
        self.min_reporters = min_reporters
        self.caller_share = caller_share
        self.counters = Counters()
        self._state: dict[tuple[str, str], _State] = {}

    def report(
        self,
        report: OutlierReport,
        now: float,
        *,
        population: Collection[str],
        policy: Outlier,
    ) -> EjectCommand | None:
        """Take one report; the command to send when it completes a quorum within the cap.

        ``population`` is the ids of the service's natsmesh instances in the registry.
        """
        self.counters.reports += 1
        key = (report.service, report.instance)
        state = self._state.get(key)
        if report.instance not in population or (state is not None and state.until > now):
            self.counters.ignored += 1
            return None
        if state is None:
            if len(self._state) >= MAX_TRACKED:
                self._trim(now)
            if len(self._state) >= MAX_TRACKED:
                self.counters.ignored += 1
                return None
            state = self._state[key] = _State()
        if report.caller in state.reporters or len(state.reporters) < MAX_REPORTERS:
            state.reporters[report.caller] = now
        cutoff = now - self.window
        state.reporters = {c: t for c, t in state.reporters.items() if t >= cutoff}
        if len(state.reporters) < self.quorum(report.service, now):
            return None
        out = len(self.ejected(report.service, now))
        if (out + 1) * 100 > policy.max_ejection_percent * len(population):
            self.counters.capped += 1
            return None
        if now - state.until > 10 * policy.base_ejection:
            state.ejections = 0  # healthy for long: start the growing periods over
        state.ejections += 1
        seconds = min(policy.base_ejection * min(state.ejections, 10), 3600.0)
        state.until = now + seconds
        state.reporters.clear()
        self.counters.ejections += 1
        return EjectCommand(
            service=report.service, id=report.instance, seconds=seconds, ejection=state.ejections
        )

    def quorum(self, service: str, now: float) -> int:
        """Distinct reporters an instance of ``service`` needs now."""
        cutoff = now - self.window
        reporting = {
            caller
            for (svc, _), state in self._state.items()
            if svc == service
            for caller, seen in state.reporters.items()
            if seen >= cutoff
        }
        return max(self.min_reporters, math.ceil(self.caller_share * len(reporting)))

    def ejected(self, service: str, now: float) -> set[str]:
        """The instances of ``service`` out of their queue groups now."""
        return {i for (svc, i), s in self._state.items() if svc == service and s.until > now}

    def forget(self, service: str, present: Collection[str]) -> None:
        """Drop the state of instances of ``service`` that left the registry."""
        for key in [k for k in self._state if k[0] == service and k[1] not in present]:
            del self._state[key]

    def _trim(self, now: float) -> None:
        cutoff = now - self.window
        for key in [
            k
            for k, s in self._state.items()
            if s.until <= now and all(t < cutoff for t in s.reporters.values())
        ]:
            del self._state[key]
