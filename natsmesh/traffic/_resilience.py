"""Pure bookkeeping that keeps retries, hedges and bad instances in check.

- :class:`Budget`: retries (or hedges) may add at most ``ratio`` of the requests
  of the last ``window`` seconds, plus ``min_per_second``, so a failing service
  is not hit by a retry storm.
- :class:`Outliers`: consecutive failures eject an instance for a period that
  grows with each ejection, never more than a share of the instances at once.
- :class:`QueueOutliers`: in queue mode, instances that fail far more than their
  share of recent calls, to report to the controller;
- :class:`LatencyWindow`: recent latencies of an endpoint, for a hedge delay at
  a percentile.

Time is passed in as ``now`` (``time.monotonic()`` seconds).
"""

from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass


class Budget:
    """Extra sends allowed as a share of recent requests, plus a floor per second."""

    def __init__(self, *, ratio: float, min_per_second: float, window: float = 10.0) -> None:
        if not (0 <= ratio <= 1 and 0 <= min_per_second < math.inf and 0 < window < math.inf):
            raise ValueError("need 0 <= ratio <= 1, min_per_second >= 0, window > 0, all finite")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._requests: collections.deque[float] = collections.deque()
        self._spent: collections.deque[float] = collections.deque()
        self.exhausted = 0

    def request(self, now: float) -> None:
        self._requests.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.window
        for times in (self._requests, self._spent):
            while times and times[0] < cutoff:
                times.popleft()

    def recent(self, now: float) -> int:
        """Requests counted in the last ``window`` seconds."""
        self._trim(now)
        return len(self._requests)

    def available(self, now: float) -> bool:
        """Whether the budget has one extra send to give now (nothing is taken)."""
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_second * self.window
        return len(self._spent) + 1 <= allowed

    def spend(self, now: float) -> None:
        """Take one extra send (after :meth:`available` said there is one)."""
        self._spent.append(now)

    def try_spend(self, now: float) -> bool:
        """Take one extra send from the budget; False (and counted) when it is empty."""
        if not self.available(now):
            self.exhausted += 1
            return False
        self._spent.append(now)
        return True


@dataclass(slots=True)
class _Health:
    failures: int = 0
    ejections: int = 0
    until: float = 0.0


class Outliers:
    """Which instances to avoid for now."""

    def __init__(
        self, *, consecutive_failures: int, base_ejection: float, max_percent: float
    ) -> None:
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_percent = max_percent
        self._health: dict[str, _Health] = {}
        self.ejected_total = 0

    def success(self, instance: str) -> None:
        health = self._health.get(instance)
        if health is not None:
            health.failures = 0

    def failure(self, instance: str, now: float, population: int) -> bool:
        """Count a failure (an error or a timeout); True when it ejects the instance."""
        health = self._health.setdefault(instance, _Health())
        health.failures += 1
        if health.failures < self.consecutive_failures or health.until > now:
            return False
        ejected_now = sum(1 for h in self._health.values() if h.until > now)
        if (ejected_now + 1) * 100 > self.max_percent * max(population, 1):
            return False
        health.ejections += 1
        health.failures = 0
        # Each repeat ejection lasts longer: base, 2 x base, 3 x base, ... capped at 10x.
        health.until = now + self.base_ejection * min(health.ejections, 10)
        self.ejected_total += 1
        return True

    def ejected(self, instance: str, now: float) -> bool:
        health = self._health.get(instance)
        return health is not None and health.until > now

    def available(self, candidates: list[str], now: float) -> list[str]:
        """The candidates not ejected; all of them if every one is (better than none)."""
        if not self._health:
            return candidates
        healthy = [c for c in candidates if self._health.get(c, _Health()).until <= now]
        return healthy or candidates

    def forget(self, keep: set[str]) -> None:
        """Drop the state of instances that left the registry."""
        for instance in [i for i in self._health if i not in keep]:
            del self._health[instance]


class QueueOutliers:
    """Which instances reached through a queue group fail far beyond their share.

    In queue mode NATS picks the instance, and only error replies name it (a
    success carries no instance id, to keep that path lean), so "consecutive
    failures" cannot be counted: an instance failing 1 % of its calls would
    collect any number of failures in a row, seen from here. Instead an instance
    is an outlier when, within ``window`` seconds, it failed at least
    ``min_failures`` times *and* at least ``share`` of the calls it would get
    with an even split (``calls / population``). Timeouts name no instance and
    count for none. Each outlier is reported at most once per ``interval``.
    """

    def __init__(
        self, *, min_failures: int, window: float = 10.0, share: float = 0.5, interval: float = 1.0
    ) -> None:
        self.min_failures = min_failures
        self.window = window
        self.share = share
        self.interval = interval
        self._failures: dict[str, collections.deque[float]] = {}
        self._reported: dict[str, float] = {}

    def failure(self, instance: str, now: float, *, calls: int, population: int) -> bool:
        """Count a failure of ``instance``; True when it should be reported now.

        ``calls`` is the number of calls to the service in the last ``window``
        seconds, ``population`` the number of instances that share them.
        """
        if instance not in self._failures and len(self._failures) >= 1024:
            self._forget_quiet(now)
            if len(self._failures) >= 1024:
                return False  # ids come from replies: bounded, whatever a service sends
        times = self._failures.setdefault(instance, collections.deque())
        times.append(now)
        cutoff = now - self.window
        while times and times[0] < cutoff:
            times.popleft()
        failed = len(times)
        if failed < self.min_failures:
            return False
        if failed * max(population, 1) < self.share * calls:
            return False
        if now - self._reported.get(instance, -math.inf) < self.interval:
            return False
        self._reported[instance] = now
        return True

    def recent(self, instance: str) -> int:
        """Failures of ``instance`` counted in its window, as of its last failure."""
        return len(self._failures.get(instance, ()))

    def _forget_quiet(self, now: float) -> None:
        cutoff = now - self.window
        for instance in [i for i, t in self._failures.items() if not t or t[-1] < cutoff]:
            del self._failures[instance]
            self._reported.pop(instance, None)


class LatencyWindow:
    """The last ``size`` latencies of one endpoint, for percentiles."""

    def __init__(self, size: int = 512) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=size)
        self._sorted: list[float] | None = None

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)
        self._sorted = None

    def __len__(self) -> int:
        return len(self._recent)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100) of the window; None until it has 20 samples."""
        if len(self._recent) < 20:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._recent)
        index = min(len(self._sorted) - 1, int(len(self._sorted) * p / 100))
        return self._sorted[index]

    def rank(self, seconds: float) -> float:
        """Share of the window at or below ``seconds`` (for tests and metrics)."""
        if self._sorted is None:
            self._sorted = sorted(self._recent)
        return bisect.bisect_right(self._sorted, seconds) / max(1, len(self._sorted))
