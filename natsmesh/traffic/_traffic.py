"""Per-service traffic state of one Mesh client, and its defaults.

One :class:`ServiceTraffic` per service called: the retry and hedge budgets, the
outlier detector, per-instance latency estimates (peak EWMA and requests in
flight), per-endpoint latency windows for hedge delays, and the counters that
make every decision visible. It follows the service's policy as it changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Final

from natsmesh.traffic._balance import PeakEwma
from natsmesh.traffic._resilience import Budget, LatencyWindow, Outliers
from natsmesh.traffic._routes import ServicePolicy
from natsmesh.wire._control import Announcement, RegistryTable

#: The policy of a service with no route table, and of every field a route table
#: leaves out (the models' defaults are these): a 5 s budget; p2c where a controller
#: publishes the registry, else the queue group; no per-try timeout (a slow but
#: healthy instance is not a failure: slow instances are p2c's and, where configured,
#: hedging's job); up to 3 attempts within a retry budget of 20 % of the requests of
#: the last 10 s plus 10 per second: for every endpoint after no responders or
#: overloaded (nothing was processed), for idempotent endpoints also after an
#: "unavailable" reply (502, 503) or an instance lost with the request; timeouts are
#: never retried unless a route says so; outlier ejection after 5 consecutive failures.
#: The README's traffic policy section states these; a test holds it to this value.
DEFAULT_POLICY: Final = ServicePolicy()

#: Seconds an instance proven gone (no responders on its own subject) stays out of
#: this client's choice while the registry says nothing new of it. The registry
#: drops a dead instance within its expiry (6 s) or announces a returning one at
#: once; this is for what it cannot see (a connection away for a moment).
GONE_RECHECK: Final = 10.0


@dataclass(slots=True)
class Counters:
    requests: int = 0
    retries: int = 0
    hedges: int = 0
    hedge_wins: int = 0
    failovers: int = 0
    zone_failovers: int = 0  # tries sent past an exhausted zone (see _zones)
    ejections: int = 0
    outlier_reports: int = 0  # queue-mode outliers reported to the controller
    mirrored: int = 0
    faults: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ServiceTraffic:
    """What one client remembers of one service between calls."""

    def __init__(self, policy: ServicePolicy) -> None:
        self.counters = Counters()
        self.instances: dict[str, PeakEwma] = {}
        self.latency: dict[str, LatencyWindow] = {}
        self.policy = policy
        self.registry: RegistryTable | None = None  # the last one followed
        self.idempotent: dict[str, bool] = {}
        self.plain = _plain(policy)
        self._configure(policy)
        # Instances proven gone: the announcement the registry showed then, and until when.
        self._gone: dict[str, tuple[Announcement | None, float]] = {}
        self.gone: frozenset[str] = frozenset()
        self._gone_lapse = math.inf

    def follow(self, policy: ServicePolicy) -> None:
        """Adopt a changed policy; budgets and outlier state restart only if their knobs moved."""
        if policy is self.policy:
            return
        old, self.policy = self.policy, policy
        self.plain = _plain(policy)
        if (old.retries, old.hedging, old.outlier) != (
            policy.retries,
            policy.hedging,
            policy.outlier,
        ):
            self._configure(policy)

    def _configure(self, policy: ServicePolicy) -> None:
        retries, outlier = policy.retries, policy.outlier
        self.retry_budget = Budget(
            ratio=retries.budget_ratio, min_per_second=retries.budget_min_per_second
        )
        hedge_ratio = policy.hedging.max_ratio if policy.hedging else 0.0
        # Latency windows cost a little per call: kept only for a percentile hedge delay.
        self.learns_latency = policy.hedging is not None and policy.hedging.percentile is not None
        self.hedge_budget = Budget(ratio=hedge_ratio, min_per_second=0.0)
        self.outliers = Outliers(
            consecutive_failures=outlier.consecutive_failures,
            base_ejection=outlier.base_ejection,
            max_percent=outlier.max_ejection_percent,
        )

    def load(self, instance: str) -> float:
        stats = self.instances.get(instance)
        return 0.0 if stats is None else stats.load(time.monotonic())

    def follow_registry(self, registry: RegistryTable) -> None:
        """Adopt a new registry: which endpoints are idempotent; forget instances that left."""
        self.registry = registry
        flags: dict[str, set[bool]] = {}
        for instance in registry.instances:
            for e in instance.endpoints:
                flags.setdefault(e.name, set()).add(e.idempotent)
        # Idempotent only if every instance says so: a rolling upgrade may disagree.
        self.idempotent = {name: seen == {True} for name, seen in flags.items()}
        present = {i.id for i in registry.instances}
        for gone in [i for i in self.instances if i not in present]:
            del self.instances[gone]
        self.outliers.forget(present)
        if self._gone:
            # A gone instance returns once the registry announces it anew (or drops it).
            current = {i.id: i for i in registry.instances}
            for marked, (seen, _) in list(self._gone.items()):
                if current.get(marked) != seen or seen is None:
                    del self._gone[marked]
            self._gone_changed()

    def mark_gone(self, instance: str, now: float) -> bool:
        """No responders on ``instance``'s own subject: proof it is gone. Out of this
        client's choice until the registry announces it again; True if newly marked.
        """
        if instance in self._gone:
            return False
        registry = self.registry
        seen = None
        if registry is not None:
            seen = next((i for i in registry.instances if i.id == instance), None)
        self._gone[instance] = (seen, now + GONE_RECHECK)
        self._gone_changed()
        return True

    def gone_now(self, now: float) -> frozenset[str]:
        """The instances not to choose (cheap: a comparison unless a mark has lapsed)."""
        if now >= self._gone_lapse:
            for instance in [i for i, (_, until) in self._gone.items() if until <= now]:
                del self._gone[instance]
            self._gone_changed()
        return self.gone

    def _gone_changed(self) -> None:
        self.gone = frozenset(self._gone)
        self._gone_lapse = min((until for _, until in self._gone.values()), default=math.inf)

    def started(self, instance: str | None) -> None:
        if instance is not None:
            self.instances.setdefault(instance, PeakEwma()).outstanding += 1

    def finished(
        self, instance: str | None, seconds: float, ok: bool, now: float, population: int
    ) -> None:
        if instance is None:
            return
        stats = self.instances.setdefault(instance, PeakEwma())
        stats.outstanding = max(0, stats.outstanding - 1)
        stats.observe(seconds, now)
        if ok:
            self.outliers.success(instance)
        elif self.outliers.failure(instance, now, population):
            self.counters.ejections += 1

    def window(self, endpoint: str) -> LatencyWindow:
        window = self.latency.get(endpoint)
        if window is None:
            window = self.latency[endpoint] = LatencyWindow()
        return window

    def hedge_delay(self, endpoint: str) -> float | None:
        hedging = self.policy.hedging
        if hedging is None:
            return None
        if hedging.delay is not None:
            return hedging.delay
        assert hedging.percentile is not None
        return self.window(endpoint).percentile(hedging.percentile)

    def metrics(self) -> dict[str, int]:
        counters = self.counters.as_dict()
        counters["retry_budget_exhausted"] = self.retry_budget.exhausted
        counters["hedge_budget_exhausted"] = self.hedge_budget.exhausted
        return counters


def _plain(policy: ServicePolicy) -> bool:
    """Whether calls under ``policy`` skip every choice but the target: the common case."""
    return (
        policy.hedging is None
        and policy.fault is None
        and policy.mirror is None
        and not policy.subsets
        and not policy.matches
        and not policy.failover
    )
