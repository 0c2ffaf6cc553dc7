"""The gateway's Prometheus metrics, in a registry of its own (never the global one).

Per service and endpoint: requests by status, and a latency histogram; requests
in flight; requests refused by authentication, by reason; and, read from the
Mesh client when scraped, its traffic counters per service (retries, hedges,
failovers, ejections, ...).

The request path only adds to plain integers and lists (one event loop, no
locks needed); a prometheus_client collector turns them into metric families
when ``/metrics`` is scraped. Label values come only from routes that matched and
services that exist, and the number of label sets is capped, so a client cannot
grow the metrics by inventing paths.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
MAX_LABEL_SETS: Final = 2_000
OTHER: Final = "_other"  # the label value once MAX_LABEL_SETS is reached
# Sub-millisecond to ten seconds: a gateway hop is a few hundred microseconds.
BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

MeshCounters = Callable[[], Mapping[str, Mapping[str, int]]]


class _Latency:
    """One label set's histogram: counts per bucket (the last is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics(Collector):
    """Counters and histograms of one gateway app, and their Prometheus registry."""

    def __init__(self, mesh_counters: MeshCounters, in_flight: Callable[[], int]) -> None:
        self._mesh_counters = mesh_counters
        self._in_flight = in_flight
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        self._auth_failures: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def observe(self, service: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (service, endpoint, status)
        count = self._requests.get(key)
        if count is None and len(self._requests) >= MAX_LABEL_SETS:
            key = (OTHER, OTHER, status)
            count = self._requests.get(key)
        self._requests[key] = (count or 0) + 1
        pair = (service, endpoint)
        latency = self._latency.get(pair)
        if latency is None:
            if len(self._latency) >= MAX_LABEL_SETS:
                pair = (OTHER, OTHER)
            latency = self._latency.setdefault(pair, _Latency())
        latency.observe(seconds)

    def auth_failure(self, reason: str) -> None:
        """Count one request refused by authentication (401) or access (403).

        ``reason`` is one of :data:`gateway._auth.REASONS`, a fixed set.
        """
        self._auth_failures[reason] = self._auth_failures.get(reason, 0) + 1

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    # -- the collector --------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "natsmesh_gateway_requests",
            "HTTP requests answered, by service, endpoint and status",
            labels=["service", "endpoint", "status"],
        )
        for (service, endpoint, status), count in sorted(self._requests.items()):
            requests.add_metric([service, endpoint, str(status)], float(count))
        yield requests
        latency = HistogramMetricFamily(
            "natsmesh_gateway_request_duration_seconds",
            "Time from a request's start to its answer, by service and endpoint",
            labels=["service", "endpoint"],
        )
        for (service, endpoint), hist in sorted(self._latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), hist.counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            latency.add_metric([service, endpoint], buckets, hist.total)
        yield latency
        failures = CounterMetricFamily(
            "natsmesh_gateway_auth_failures",
            "Requests refused by authentication (401) or access rules (403), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self._auth_failures.items()):
            failures.add_metric([reason], float(count))
        yield failures
        yield GaugeMetricFamily(
            "natsmesh_gateway_in_flight", "Requests being handled", value=self._in_flight()
        )
        yield from _mesh_families(self._mesh_counters())


def _mesh_families(counters: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    """The Mesh client's per-service counters, one family per counter."""
    families: dict[str, CounterMetricFamily] = {}
    for service, values in sorted(counters.items()):
        for name, value in sorted(values.items()):
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    f"natsmesh_client_{name}",
                    f"Mesh client {name.replace('_', ' ')}, per service called",
                    labels=["service"],
                )
            family.add_metric([service], float(value))
    yield from families.values()
