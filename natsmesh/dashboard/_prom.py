"""The whole mesh's metrics in Prometheus's text format, with Linkerd-like names.

=================================  =======  ===============================================
metric                             type     labels
=================================  =======  ===============================================
``natsmesh_request_total``         counter  caller, callee, endpoint, subset, zone
``natsmesh_response_total``        counter  the same, and classification, outcome
``natsmesh_response_latency_ms``   hist.    caller, callee, endpoint, subset, zone
``natsmesh_observer_summaries``    counter  (none): summaries taken
``natsmesh_observer_rejected``     counter  (none): summaries and tap batches refused
=================================  =======  ===============================================

``zone`` is the caller's; ``classification`` is ``success`` or ``failure`` (the
callee's fault: no responders, deadline, overloaded, 5xx, an invalid reply).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from natsmesh.dashboard._observer import Observer
from natsmesh.traffic._aggregate import FAILURES, Counts
from natsmesh.wire._observe import BUCKETS_MS

_LABELS = ["caller", "callee", "endpoint", "subset", "zone"]


class _MeshCollector(Collector):
    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def collect(self) -> Iterator[Metric]:
        observer = self._observer
        requests = CounterMetricFamily(
            "natsmesh_request", "Calls made, by caller and callee", labels=_LABELS
        )
        responses = CounterMetricFamily(
            "natsmesh_response",
            "Calls finished, by classification and outcome",
            labels=[*_LABELS, "classification", "outcome"],
        )
        latency = HistogramMetricFamily(
            "natsmesh_response_latency_ms", "Call latency as the caller saw it", labels=_LABELS
        )
        per_call: dict[tuple[str, ...], Counts] = {}
        for (caller, zone, callee, endpoint, subset, outcome), c in sorted(
            observer.aggregate.totals().items()
        ):
            labels = (caller, callee, endpoint, subset, zone)
            klass = "failure" if outcome in FAILURES else "success"
            responses.add_metric([*labels, klass, outcome], c.count)
            per_call.setdefault(labels, Counts()).add(c.count, c.sum_ms, c.buckets)
        for key, c in per_call.items():
            requests.add_metric(list(key), c.count)
            cumulative, running = [], 0
            for bound, n in zip((*map(str, BUCKETS_MS), "+Inf"), c.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric(list(key), cumulative, c.sum_ms)
        yield requests
        yield responses
        yield latency
        yield CounterMetricFamily(
            "natsmesh_observer_summaries", "Summaries taken", value=observer.summaries
        )
        yield CounterMetricFamily(
            "natsmesh_observer_rejected",
            "Summaries and tap batches refused",
            value=observer.rejected,
        )


def registry_for(observer: Observer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MeshCollector(observer))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
