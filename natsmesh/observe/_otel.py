"""Traces: every call and every handler an OpenTelemetry span, with ``natsmesh[otel]``.

Switched on by the standard environment: ``OTEL_TRACES_EXPORTER`` (``otlp``, the
default, or ``console``) or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, unless
``OTEL_SDK_DISABLED=true``. Then, when the application has not set a tracer
provider of its own, natsmesh sets the SDK's, with the service name from
``OTEL_SERVICE_NAME`` (else the natsmesh service's name) and a batch exporter.
Without the extra or without those variables :func:`tracer` is None, nothing of
OpenTelemetry is imported, and the hooks cost one attribute test.

Spans link through the ``traceparent`` the mesh already carries: a call's span is
the child of the request being served (its server span), and what it sends is
its own span's context, which the callee's server span takes as its parent. So
gateway → orders → pricing → catalog is one trace, each hop a client span and a
server span.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from natsmesh.wire._headers import Trace

log = logging.getLogger("natsmesh.observe")

_tracer: Any = None
_looked = False


def enabled_by_environment(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter:
        return exporter.lower() != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracer(service: str = "natsmesh") -> Any:
    """The tracer natsmesh's spans go to, or None (no extra, or not configured)."""
    global _tracer, _looked  # one provider per process, found or made once
    if _looked:
        return _tracer
    _looked = True
    if not enabled_by_environment():
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        log.warning("OTEL_* is set but natsmesh[otel] is not installed: no traces")
        return None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        _install_provider(service)
    _tracer = trace.get_tracer("natsmesh")
    return _tracer


def _install_provider(service: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service}
    provider = TracerProvider(resource=Resource.create(attributes))
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip().lower()
    exporter: Any
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _parent(trace_: Trace | None) -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    if trace_ is None:
        return None
    context = SpanContext(
        trace_id=int(trace_.trace_id, 16),
        span_id=int(trace_.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(trace_.flags, 16)),
    )
    return trace.set_span_in_context(NonRecordingSpan(context))


def _trace_of(span: Any) -> Trace:
    context = span.get_span_context()
    return Trace(
        f"{context.trace_id:032x}", f"{context.span_id:016x}", f"{context.trace_flags:02x}"
    )


def start(tracer_: Any, name: str, kind: str, parent: Trace | None) -> tuple[Any, Trace]:
    """A span named ``name`` (``client`` or ``server``) under ``parent``; and its context."""
    from opentelemetry.trace import SpanKind

    span = tracer_.start_span(
        name,
        context=_parent(parent),
        kind=SpanKind.CLIENT if kind == "client" else SpanKind.SERVER,
    )
    return span, _trace_of(span)


def end(span: Any, error: str | BaseException | None) -> None:
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()
