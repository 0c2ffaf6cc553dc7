"""A caller's queue-mode outlier reports to the controller.

In queue mode the caller does not choose the instance; an error reply names it
(``Mesh-Instance``), a success does not (the success path stays lean). Failures
are counted per instance by :class:`~natsmesh.traffic._resilience.QueueOutliers`, and
an instance that fails far beyond its share is reported on
``<prefix>._ctl.outlier.<service>.<identity>``, a subject only this caller's
identity may publish under a policy; the controller counts distinct identities
from that token, never from the body (see ``_ejector``).

What is counted: error replies with a 5xx code other than *overloaded* (an
instance shedding load is doing its job; taking it out would push its share onto
the others). Timeouts name no instance and count for none: in queue mode they
are covered by retries and hedging, and a frozen instance by the server dropping
its connection (ping interval) and by its missing heartbeats.

Only a caller that has the service's registry (so a controller runs) reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from natsmesh.traffic._resilience import QueueOutliers
from natsmesh.traffic._traffic import ServiceTraffic
from natsmesh.transport._link import Link
from natsmesh.wire import _headers
from natsmesh.wire._control import OutlierReport, RegistryTable, identity_of, outlier_subject
from natsmesh.wire._errors import InvalidName
from natsmesh.wire._subjects import validate_token

log = logging.getLogger("natsmesh.client")


def instance_of(headers: Mapping[str, str] | None) -> str | None:
    """The instance an error reply names (``Mesh-Instance``), if it is a valid id."""
    instance = headers.get(_headers.INSTANCE) if headers else None
    if instance is None:
        return None
    try:
        return validate_token("instance id", instance)
    except InvalidName:
        return None


class QueueReporter:
    """Counts queue-mode failures per service and instance, and reports outliers."""

    def __init__(self, link: Link, *, prefix: str, caller: str) -> None:
        self._link = link
        self._prefix = prefix
        self._caller = caller[:256] or "client"
        self.identity = identity_of(link.new_inbox(), self._caller)
        self._detectors: dict[str, QueueOutliers] = {}

    async def failed(
        self,
        service: str,
        instance: str,
        traffic: ServiceTraffic,
        registry: RegistryTable | None,
    ) -> None:
        """An error reply reached through a queue group: count it against its instance."""
        if registry is None:
            return
        population = sum(1 for i in registry.instances if i.mesh)
        if population < 2:
            return  # nothing to shift its load to: the controller would refuse anyway
        min_failures = traffic.policy.outlier.consecutive_failures
        detector = self._detectors.get(service)
        if detector is None or detector.min_failures != min_failures:
            detector = self._detectors[service] = QueueOutliers(min_failures=min_failures)
        now = time.monotonic()
        calls = traffic.retry_budget.recent(now)
        if not detector.failure(instance, now, calls=calls, population=population):
            return
        traffic.counters.outlier_reports += 1
        report = OutlierReport(
            service=service,
            instance=instance,
            caller=self._caller,
            failures=min(detector.recent(instance), 10_000_000),
            calls=min(calls, 10_000_000),
            window=detector.window,
        )
        subject = outlier_subject(self._prefix, service, self.identity)
        try:
            await self._link.publish(subject, report.model_dump_json().encode())
        except Exception as exc:  # a closed or reconnecting connection: the next failure retries
            log.debug("outlier report for %s/%s not sent: %s", service, instance, exc)
