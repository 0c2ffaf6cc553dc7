"""What a running instance says about itself (pure: built from its spec and counters).

The NATS Services API answers (ADR-32 PING, INFO and STATS) and the control
plane's announcement, from one :class:`Instance` and the live
:class:`EndpointState` counters the request path keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from natsmesh._version import __version__
from natsmesh.services._spec import EndpointSpec, ServiceSpec
from natsmesh.wire import _micro
from natsmesh.wire._control import Announcement, EndpointEntry
from natsmesh.wire._subjects import Subjects


class EndpointState:
    """Live state of one endpoint: its spec, bound handler and ADR-32 counters."""

    __slots__ = (
        "dropped",
        "handler",
        "last_error",
        "num_errors",
        "num_requests",
        "processing_ns",
        "retried",
        "shed",
        "spec",
        "subject",
    )

    def __init__(self, spec: EndpointSpec, handler: Callable[..., Any], subject: str) -> None:
        self.spec = spec
        self.handler = handler
        self.subject = subject
        self.num_requests = 0
        self.num_errors = 0
        self.last_error = ""
        self.processing_ns = 0
        self.dropped = 0
        self.shed = 0
        self.retried = 0

    def error(self, code: int, message: str) -> None:
        self.num_errors += 1
        self.last_error = f"{code}: {message}"


@dataclass(frozen=True, slots=True)
class Instance:
    spec: ServiceSpec
    id: str
    subjects: Subjects
    zone: str
    started: datetime


def _identity(instance: Instance) -> dict[str, Any]:
    spec = instance.spec
    return {
        "name": spec.name,
        "id": instance.id,
        "version": spec.version,
        "metadata": {
            **spec.metadata,
            _micro.MESH_KEY: __version__,
            _micro.SUBSET_KEY: spec.subset,
            _micro.PREFIX_KEY: instance.subjects.prefix,
            "natsmesh.zone": instance.zone,
        },
    }


def ping(instance: Instance) -> _micro.Ping:
    return _micro.Ping(**_identity(instance))


def info(instance: Instance, endpoints: Sequence[EndpointState]) -> _micro.Info:
    s, spec = instance.subjects, instance.spec
    return _micro.Info(
        **_identity(instance),
        description=spec.description,
        endpoints=[
            _micro.EndpointInfo(
                name=ep.spec.name,
                subject=ep.subject,
                queue_group=s.queue_group(spec.name),
                metadata={
                    **ep.spec.schema_metadata(),
                    "natsmesh.subset_subject": s.subset(spec.name, spec.subset, ep.spec.name),
                    "natsmesh.instance_subject": s.instance(spec.name, instance.id, ep.spec.name),
                },
            )
            for ep in endpoints
        ],
    )


def stats(
    instance: Instance,
    endpoints: Sequence[EndpointState],
    *,
    in_flight: int,
    queue: Mapping[str, int] | None = None,
) -> _micro.Stats:
    """ADR-32 STATS; ``queue``: the instance's queue-group ejection counters, per endpoint."""
    queue_group = instance.subjects.queue_group(instance.spec.name)
    return _micro.Stats(
        **_identity(instance),
        started=_micro.rfc3339(instance.started),
        endpoints=[
            _micro.EndpointStats(
                name=ep.spec.name,
                subject=ep.subject,
                queue_group=queue_group,
                num_requests=ep.num_requests,
                num_errors=ep.num_errors,
                last_error=ep.last_error,
                processing_time=ep.processing_ns,
                average_processing_time=ep.processing_ns // ep.num_requests
                if ep.num_requests
                else 0,
                data={
                    "dropped_expired": ep.dropped,
                    "shed_overloaded": ep.shed,
                    "retries_received": ep.retried,
                    "in_flight": in_flight,
                    **(queue or {}),
                },
            )
            for ep in endpoints
        ],
    )


def announcement(instance: Instance) -> Announcement:
    s, spec = instance.subjects, instance.spec
    return Announcement(
        service=spec.name,
        id=instance.id,
        version=spec.version,
        subset=spec.subset,
        endpoints=tuple(
            EndpointEntry(
                name=e.name,
                subject=s.endpoint(spec.name, e.name),
                idempotent=e.idempotent,
                request_schema=meta["natsmesh.request_schema"],
                response_schema=meta["natsmesh.response_schema"],
            )
            for e in spec.endpoints
            for meta in (e.schema_metadata(),)
        ),
        metadata=dict(spec.metadata),
        zone=instance.zone,
    )
