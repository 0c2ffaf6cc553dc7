"""The two places the data plane calls into observation, kept to one call each.

- the Mesh client, when a call finishes (succeeded or raised):
  :meth:`CallObserver.done`;
- a service instance, when a request it handled finishes: :meth:`ServeObserver.done`.

Both are cheap when nobody observes: the call counts into its meter (a dict lookup
and a few integer increments); the request costs one attribute read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from time import monotonic as _monotonic
from typing import Any, Self

from natsmesh.observe import _otel
from natsmesh.observe._report import FailureLog, MetricsReporter, Tap
from natsmesh.traffic._meter import Meter, outcome_of
from natsmesh.transport._link import Link
from natsmesh.wire._errors import Cause
from natsmesh.wire._headers import TRACEPARENT, Trace, parse_traceparent


class CallObserver:
    """A Mesh client's side: its meter, and the reporter that publishes it on demand."""

    __slots__ = ("_stack", "meter", "reporter", "tracer")

    def __init__(self) -> None:
        self.meter = Meter()
        self.reporter: MetricsReporter | None = None
        self.tracer: Any = None  # an OpenTelemetry tracer, with natsmesh[otel] and OTEL_*
        self._stack = AsyncExitStack()

    def begin(
        self, service: str, endpoint: str, upstream: Trace | None, traceparent: str | None
    ) -> tuple[Any, str | None]:
        """A call starts: its client span (None without tracing) and the traceparent to
        send (the span's own, so that the callee's span is its child).
        """
        if self.tracer is None:
            return None, traceparent
        span, trace = _otel.start(self.tracer, f"{service}.{endpoint}", "client", upstream)
        return span, trace.header()

    def done(
        self,
        service: str,
        endpoint: str,
        subset: str | None,
        error: BaseException | None,
        started: float,
        span: Any = None,
    ) -> None:
        """Count one finished call that began at ``started`` (time.monotonic())."""
        outcome = "ok" if error is None else outcome_of(error)
        self.meter.record(service, endpoint, subset, outcome, (_monotonic() - started) * 1000.0)
        if span is not None:
            _otel.end(span, error)

    async def start(self, link: Link, *, prefix: str, name: str, zone: Callable[[], str]) -> Self:
        reporter = MetricsReporter(link, self.meter, prefix=prefix, name=name, zone=zone)
        self.reporter = await self._stack.enter_async_context(reporter)
        self.tracer = _otel.tracer(name.partition("/")[0])
        return self

    async def stop(self) -> None:
        await self._stack.aclose()
        self.reporter = None


class NoObserver(CallObserver):
    """A Mesh client that counts nothing (``Mesh(metrics=False)``)."""

    __slots__ = ()

    def done(
        self,
        service: str,
        endpoint: str,
        subset: str | None,
        error: BaseException | None,
        started: float,
        span: Any = None,
    ) -> None:
        pass

    async def start(self, link: Link, *, prefix: str, name: str, zone: Callable[[], str]) -> Self:
        return self


class ServeObserver:
    """A service instance's side: its tap and its recent failed requests."""

    __slots__ = ("_stack", "failures", "tap", "tracer")

    def __init__(self) -> None:
        self.tap: Tap | None = None
        self.failures: FailureLog | None = None
        self.tracer: Any = None
        self._stack = AsyncExitStack()

    def begin(
        self, service: str, endpoint: str, headers: Mapping[str, str] | None, context: Any
    ) -> Any:
        """A request's handler starts: its server span (None without tracing), the
        child of the caller's span; the handler's nested calls become its children
        (``context``'s trace is the span's).
        """
        if self.tracer is None:
            return None  # before the span's name is built: this is every request's path
        parent = parse_traceparent(headers.get(TRACEPARENT)) if headers else None
        span, trace = _otel.start(self.tracer, f"{service}.{endpoint}", "server", parent)
        if context is not None:
            context._trace = trace  # the Context's own slot: read by its `trace` property
        return span

    def done(
        self,
        endpoint: str,
        headers: dict[str, str] | None,
        error: str | None,
        started_ns: int,
        span: Any = None,
    ) -> None:
        """One request handled; ``error`` is its ``"code: message"`` if it failed,
        ``started_ns`` from time.perf_counter_ns().
        """
        tap = self.tap
        if tap is not None and tap.on:
            tap.record(endpoint, headers, _status(error), started_ns)
        if span is not None:
            _otel.end(span, error)

    def failed(
        self,
        endpoint: str,
        code: int,
        kind: str,
        message: str,
        causes: tuple[Cause, ...],
        headers: Mapping[str, str] | None,
        trace: Trace | None,
    ) -> None:
        """A request was answered with an error (called where the reply is built)."""
        failures = self.failures
        if failures is None:
            return
        if trace is None and headers:
            trace = parse_traceparent(headers.get(TRACEPARENT))
        failures.record(endpoint, code, kind, message, causes, trace.trace_id if trace else "")

    async def start(self, link: Link, *, prefix: str, service: str, instance: str) -> Self:
        tap = Tap(link, prefix=prefix, service=service, instance=instance)
        self.tap = await self._stack.enter_async_context(tap)
        failures = FailureLog(link, prefix=prefix, service=service, instance=instance)
        self.failures = await self._stack.enter_async_context(failures)
        self.tracer = _otel.tracer(service)
        return self

    async def stop(self) -> None:
        await self._stack.aclose()
        self.tap = None
        self.failures = None


def _status(error: str | None) -> int:
    if error is None:
        return 200
    code = error.split(":", 1)[0]
    return int(code) if code.isdigit() and len(code) == 3 else 500
