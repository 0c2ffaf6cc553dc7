"""Adding up the callers' summaries: totals for Prometheus, sliding windows for people (pure).

Each caller (an identity, the subject token it reports under) sends cumulative
counters. Totals are the sum of every caller's latest counters plus what callers
that restarted or went quiet had counted before (``retired``), so the Prometheus
counters never go backwards. Windows are differences between a caller's latest
summary and the oldest one it sent within the window: a caller that joined in
the window counts from its first summary, not from its birth.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from natsmesh.traffic._meter import quantile
from natsmesh.wire._observe import _N_BUCKETS, Summary, caller_of

#: Outcomes that are the callee's fault (Linkerd's "failure" classification).
FAILURES: Final = frozenset(
    {"no_responders", "deadline", "overloaded", "server_error", "invalid_reply", "lost", "other"}
)
WINDOW: Final = 10.0  # seconds, for rates, success and percentiles
QUIET: Final = 30.0  # a caller silent this long is retired from the windows
MAX_CALLERS: Final = 10_000

# (caller, zone, callee, endpoint, subset, outcome)
FullKey = tuple[str, str, str, str, str, str]


@dataclass(slots=True)
class Counts:
    count: int = 0
    sum_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * _N_BUCKETS)

    def add(self, count: int, sum_ms: float, buckets: list[int] | tuple[int, ...]) -> None:
        self.count += count
        self.sum_ms += sum_ms
        for i, n in enumerate(buckets):
            self.buckets[i] += n


_Row = tuple[str, str, str, str, str, int, list[int], float]
_Values = dict[tuple[str, str, str, str], tuple[int, float, list[int]]]


@dataclass(slots=True)
class _Caller:
    identity: str
    epoch: int
    zone: str
    history: deque[tuple[float, _Values]]


@dataclass(frozen=True, slots=True)
class Stat:
    """Traffic over a window: per second, success ratio, percentiles (ms; None: no data)."""

    requests: int
    failures: int
    rps: float
    success: float | None
    p50: float | None
    p99: float | None

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "rps": round(self.rps, 3),
            "success": None if self.success is None else round(self.success, 4),
            "p50": None if self.p50 is None else round(self.p50, 3),
            "p99": None if self.p99 is None else round(self.p99, 3),
        }


class _Acc:
    __slots__ = ("buckets", "failures", "requests", "rps")

    def __init__(self) -> None:
        self.rps = 0.0
        self.requests = 0
        self.failures = 0
        self.buckets = [0] * _N_BUCKETS

    def stat(self) -> Stat:
        n = self.requests
        return Stat(
            requests=n,
            failures=self.failures,
            rps=self.rps,
            success=(n - self.failures) / n if n else None,
            p50=quantile(self.buckets, 0.5),
            p99=quantile(self.buckets, 0.99),
        )


class Aggregate:
    """Every caller's summaries; ``now`` is passed in (time.monotonic())."""

    def __init__(self, *, window: float = WINDOW, quiet: float = QUIET) -> None:
        self.window = window
        self.quiet = quiet
        self._callers: dict[str, _Caller] = {}
        self.retired: dict[FullKey, Counts] = {}
        self.rejected = 0  # summaries refused (counted by the observer's I/O side)

    def add(self, identity: str, summary: Summary, now: float) -> None:
        values: _Values = {(r[0], r[1], r[2], r[3]): (r[4], r[5], r[6]) for r in summary.rows}
        seen = self._callers.get(identity)
        if seen is not None and (seen.epoch != summary.epoch or _went_back(seen, values)):
            self._retire(seen)  # a restart: its counters began again
            seen = None
        if seen is None:
            if len(self._callers) >= MAX_CALLERS:
                return
            seen = self._callers[identity] = _Caller(identity, summary.epoch, summary.zone, deque())
        seen.zone = summary.zone
        seen.history.append((now, values))
        horizon = now - self.window - 2.5  # one report's worth before the window
        while len(seen.history) > 2 and seen.history[1][0] <= horizon:
            seen.history.popleft()

    def expire(self, now: float) -> None:
        for identity, seen in list(self._callers.items()):
            if seen.history and seen.history[-1][0] < now - self.quiet:
                self._retire(seen)
                del self._callers[identity]

    def _retire(self, seen: _Caller) -> None:
        caller = caller_of(seen.identity)
        for (svc, ep, subset, outcome), (n, total, buckets) in seen.history[-1][1].items():
            key = (caller, seen.zone, svc, ep, subset, outcome)
            self.retired.setdefault(key, Counts()).add(n, total, buckets)

    def totals(self) -> dict[FullKey, Counts]:
        """Cumulative counts per caller, zone, callee, endpoint, subset and outcome."""
        out = {k: Counts(v.count, v.sum_ms, list(v.buckets)) for k, v in self.retired.items()}
        for seen in self._callers.values():
            caller = caller_of(seen.identity)
            for (svc, ep, subset, outcome), (n, total, b) in seen.history[-1][1].items():
                out.setdefault((caller, seen.zone, svc, ep, subset, outcome), Counts()).add(
                    n, total, b
                )
        return out

    def recent(self, now: float) -> list[_Row]:
        """Window deltas: (caller, zone, callee, endpoint, outcome, count, buckets, seconds)."""
        out = []
        for seen in self._callers.values():
            if not seen.history or seen.history[-1][0] < now - self.window:
                continue
            base_t, base = seen.history[0]
            for t, values in seen.history:
                if t >= now - self.window:
                    break
                base_t, base = t, values
            if len(seen.history) < 2:
                continue
            latest_t, latest = seen.history[-1]
            seconds = latest_t - base_t
            if seconds <= 0:
                continue
            caller = caller_of(seen.identity)
            for key, (n, _total, buckets) in latest.items():
                before = base.get(key)
                dn = n - (before[0] if before else 0)
                if dn <= 0:
                    continue
                db = [b - (before[2][i] if before else 0) for i, b in enumerate(buckets)]
                out.append((caller, seen.zone, key[0], key[1], key[3], dn, db, seconds))
        return out

    def edges(self, now: float) -> dict[tuple[str, str], Stat]:
        """Per (caller, callee) over the window."""
        return self._group(now, lambda r: (r[0], r[2]))

    def callees(self, now: float) -> dict[str, Stat]:
        """Per callee service over the window, from every caller's side."""
        return {k[0]: v for k, v in self._group(now, lambda r: (r[2], "")).items()}

    def endpoints(self, now: float, service: str) -> dict[str, Stat]:
        grouped = self._group(now, lambda r: (r[3], "") if r[2] == service else None)
        return {k[0]: v for k, v in grouped.items()}

    def _group(
        self, now: float, key_of: Callable[[_Row], tuple[str, str] | None]
    ) -> dict[tuple[str, str], Stat]:
        accs: dict[tuple[str, str], _Acc] = {}
        for row in self.recent(now):
            key = key_of(row)
            if key is None:
                continue
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = _Acc()
            acc.requests += row[5]
            acc.rps += row[5] / row[7]
            if row[4] in FAILURES:
                acc.failures += row[5]
            for i, n in enumerate(row[6]):
                acc.buckets[i] += n
        return {k: a.stat() for k, a in accs.items()}

    def callers(self) -> list[str]:
        return sorted({caller_of(i) for i in self._callers})


def _went_back(seen: _Caller, values: _Values) -> bool:
    last = seen.history[-1][1] if seen.history else {}
    return any(values.get(k, (0,))[0] < v[0] for k, v in last.items())
