"""Traces across processes: one request through three services is one OpenTelemetry trace.

catalog, pricing and orders run as three ``natsmesh serve`` processes and
``natsmesh call orders.place`` as a fourth, each exporting OTLP over HTTP to a
collector this test runs (a real HTTP server decoding the real protobuf). The
spans of the one request must form the tree the calls made: the call's client
span, orders' server span under it, orders' client spans under that, and so on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from procs import Proc

trace_service_pb2 = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra: pip install natsmesh[otel]",
)


class _Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, with its service name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: Any) -> None:
        with self.changed:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": attributes.get("service.name", ""),
                                "name": span.name,
                                "kind": span.kind,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                            }
                        )
            self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.spans), timeout)


@pytest.fixture
def collector() -> Iterator[_Collector]:
    c = _Collector()
    thread = threading.Thread(target=c.server.serve_forever, daemon=True)
    thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers


def test_one_request_through_three_services_is_one_trace(
    nats_url: str, collector: _Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    services = [
        Proc("serve", f"examples.shop.{module}:{cls}", nats_url=nats_url)
        for module, cls in (("catalog", "Catalog"), ("pricing", "PricingV1"), ("orders", "Orders"))
    ]
    try:
        for proc in services:
            proc.wait_ready()
        payload = '{"product_id": 1, "quantity": 1, "customer": "ada"}'
        with Proc("call", "orders.place", payload, nats_url=nats_url) as call:
            assert call.popen.wait(30) == 0, "".join(call.stderr_lines)

        def complete(spans: list[dict[str, Any]]) -> bool:
            roots = [s for s in spans if s["name"] == "orders.place" and s["kind"] == CLIENT]
            if not roots:
                return False
            trace = [s for s in spans if s["trace"] == roots[0]["trace"]]
            # call → orders; orders → catalog, pricing; pricing → catalog: 4 hops, 8 spans.
            return len(trace) >= 8

        assert collector.wait_for(complete, timeout=30), collector.spans
    finally:
        for proc in services:
            proc.close()
    root = next(s for s in collector.spans if s["name"] == "orders.place" and s["kind"] == CLIENT)
    spans = [s for s in collector.spans if s["trace"] == root["trace"]]
    by_id = {s["id"]: s for s in spans}
    assert root["parent"] == ""  # the call started the trace
    for span in spans:
        if span is root:
            continue
        parent = by_id[span["parent"]]  # every other span's parent is in the same trace
        if span["kind"] == SERVER:
            assert parent["kind"] == CLIENT
            assert parent["name"] == span["name"]  # the call of exactly this endpoint
        else:
            assert span["kind"] == CLIENT
            assert parent["kind"] == SERVER  # made while serving a request
            assert parent["service"] == span["service"]  # ... in the same service
    servers = {s["service"] for s in spans if s["kind"] == SERVER}
    assert servers == {"orders", "pricing", "catalog"}
    pricing = next(s for s in spans if s["kind"] == SERVER and s["service"] == "pricing")
    assert by_id[by_id[pricing["parent"]]["parent"]]["service"] == "orders"


def test_without_the_variables_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys\n"
        "import natsmesh.cli._main\n"
        "from natsmesh.observe import _otel\n"
        "assert _otel.tracer('x') is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_standard_variables_switch_traces_on(environ: dict[str, str], on: bool) -> None:
    from natsmesh.observe._otel import enabled_by_environment

    assert enabled_by_environment(environ) is on


@pytest.fixture
def spans() -> Iterator[Any]:
    """Spans as the SDK finished them, in process (an in-memory exporter)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporter.tracer = provider.get_tracer("test")  # type: ignore[attr-defined]
    yield exporter
    provider.shutdown()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "payload", "error"),
    [
        ("echo.nosuch", {}, "UnknownEndpoint"),
        ("ghost.1st", {}, "NoResponders"),  # outside the convention: $SRV must tell
        ("echo.1st", {}, "UnknownEndpoint"),
        ("echo.echo", object(), "PydanticSerializationError"),
    ],
)
async def test_a_call_that_fails_before_sending_ends_its_span(
    nats_url: str, spans: Any, target: str, payload: Any, error: str
) -> None:
    from services import Echo

    from natsmesh import Mesh, ServiceRunner

    async with ServiceRunner(Echo, nats=nats_url), Mesh(nats_url, name="probe") as mesh:
        mesh._observer.tracer = spans.tracer
        with pytest.raises(Exception) as raised:  # noqa: PT011  (the name is checked below)
            await mesh.call(target, payload, timeout=1)
        assert type(raised.value).__name__ == error
    [span] = spans.get_finished_spans()
    assert span.name == target
    assert span.status.status_code.name == "ERROR"
