"""What a caller counts: calls per (service, endpoint, subset, outcome), with latencies.

Pure (no I/O): the Mesh client records every finished call here, and a reporter
(:mod:`natsmesh.observe._report`) reads :meth:`Meter.rows` while an observer asks.
Counters are cumulative since the meter was made, so a lost summary loses nothing
and the observer computes rates from differences; ``epoch`` (random per meter)
tells it when a caller restarted and its counters began again.

The hot path (:meth:`Meter.record`) looks one series up in a dict and bumps a few
ints in place: no object survives the call. Latency buckets are fixed, in
milliseconds, Prometheus-style upper bounds, the last one ``+Inf``.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from bisect import bisect_left as _bisect
from typing import Final

from natsmesh.wire._observe import _N_BUCKETS, BUCKETS_MS, Row


class Series:
    """One (service, endpoint, subset, outcome): a count, a sum and the buckets."""

    __slots__ = ("buckets", "count", "sum_ms")

    def __init__(self) -> None:
        self.count = 0
        self.sum_ms = 0.0
        self.buckets = [0] * _N_BUCKETS  # per bucket, not cumulative

    def add(self, latency_ms: float) -> None:
        self.count += 1
        self.sum_ms += latency_ms
        self.buckets[bisect_left(BUCKETS_MS, latency_ms)] += 1


Key = tuple[str, str, str, str]  # service, endpoint, subset ("" for none), outcome


class Meter:
    """The counters of one caller (a Mesh client)."""

    __slots__ = ("_series", "epoch", "max_series")

    def __init__(self, *, max_series: int = 4096) -> None:
        self._series: dict[Key, Series] = {}
        self.epoch = random.getrandbits(48)
        # Past this many series (a caller calling endless endpoint names that all fail
        # as unknown), new ones are not counted: a bounded summary beats a complete one.
        self.max_series = max_series

    def record(
        self, service: str, endpoint: str, subset: str | None, outcome: str, latency_ms: float
    ) -> None:
        """Count one finished call."""
        key = (service, endpoint, subset or "", outcome)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                return
            series = self._series[key] = Series()
        # Series.add, inlined: this runs once per call.
        series.count += 1
        series.sum_ms += latency_ms
        series.buckets[_bisect(BUCKETS_MS, latency_ms)] += 1

    def rows(self) -> list[Row]:
        """Every series as a row: service, endpoint, subset, outcome, count, sum_ms, buckets."""
        return [
            (k[0], k[1], k[2], k[3], s.count, s.sum_ms, list(s.buckets))
            for k, s in self._series.items()
        ]

    def __len__(self) -> int:
        return len(self._series)


def outcome_of(exc: BaseException | None) -> str:
    """The outcome label of a call that raised ``exc`` (None: it succeeded).

    By class name, so this pure module needs no import of the error tree, and an
    error class that is renamed falls back to "other" rather than breaking a call.
    """
    if exc is None:
        return "ok"
    code = getattr(exc, "code", None)
    for cls in type(exc).__mro__:
        name = _BY_CLASS.get(cls.__name__)
        if name == "remote_error":
            return "client_error" if isinstance(code, int) and code < 500 else "server_error"
        if name is not None:
            return name
    return "other"


_BY_CLASS: Final = {
    "NoResponders": "no_responders",
    "DeadlineExceeded": "deadline",
    "Overloaded": "overloaded",
    "InvalidRequest": "invalid_request",
    "UnknownEndpoint": "unknown_endpoint",
    "InvalidReply": "invalid_reply",
    "InstanceLost": "lost",
    "PermissionDenied": "denied",
    "RemoteError": "remote_error",
    "TimeoutError": "deadline",
    "CancelledError": "other",
}


def quantile(buckets: list[int] | tuple[int, ...], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram of :data:`BUCKETS_MS`, in ms, interpolated
    linearly inside its bucket as Prometheus's ``histogram_quantile`` does; None when empty.
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            low = BUCKETS_MS[i - 1] if i > 0 else 0.0
            if i >= len(BUCKETS_MS):
                return BUCKETS_MS[-1]  # +Inf: the highest finite bound, as Prometheus says
            return low + (BUCKETS_MS[i] - low) * ((rank - seen) / n)
        seen += n
    return BUCKETS_MS[-1]
