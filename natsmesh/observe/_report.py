"""Publishing what was counted, only while somebody listens.

:class:`MetricsReporter` (one per Mesh client) publishes its meter's summary, and
:class:`Tap` (one per service instance) its recent requests, each when an observer's
interest message asks (every :data:`REPORT_EVERY` and :data:`TAP_FLUSH_EVERY`
seconds); a tap samples requests only for :data:`INTEREST_TTL` seconds after the last.
A mesh that nobody observes costs one idle subscription per client, and nothing per
call beyond the meter's few increments.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Self

from natsmesh.traffic._meter import Meter
from natsmesh.transport._link import Link, Subscription
from natsmesh.transport._transport import Msg
from natsmesh.wire import _headers
from natsmesh.wire import _observe as _wire
from natsmesh.wire._control import identity_of
from natsmesh.wire._errors import Cause, clean_message

log = logging.getLogger("natsmesh.observe")


class _WhileInterested:
    """Publishes (``_publish``) when an interest message arrives, at most every ``every``
    seconds; :attr:`on` for :data:`INTEREST_TTL` seconds after the last one.

    No timer and no task of its own: the observer's interest messages are the clock,
    so a client that nobody observes runs nothing at all, and one whose observer
    vanished stops within one message. The rate limit keeps a flood of interest
    messages from turning into a flood of summaries.
    """

    def __init__(self, link: Link, interest: str, every: float) -> None:
        self._link = link
        self._interest = interest
        self._every = every
        self._until = 0.0
        self._last = -every
        self._sub: Subscription | None = None

    @property
    def on(self) -> bool:
        return self._until > time.monotonic()

    async def __aenter__(self) -> Self:
        self._sub = await self._link.subscribe(self._interest, cb=self._on_interest)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await _unsubscribe(sub)

    async def _on_interest(self, msg: Msg) -> None:
        # The body is ignored: interest says nothing but "now", and so cannot lie.
        now = time.monotonic()
        self._until = now + _wire.INTEREST_TTL
        if now - self._last < self._every * 0.9:
            return
        self._last = now
        try:
            await self._publish()
        except Exception as exc:  # a closed or refused connection: the next interest retries
            log.debug("observe: publish failed: %s", exc)

    async def _publish(self) -> None:
        raise NotImplementedError


class MetricsReporter(_WhileInterested):
    """Publishes a Mesh client's :class:`Meter` summary while an observer asks."""

    def __init__(
        self, link: Link, meter: Meter, *, prefix: str, name: str, zone: Callable[[], str]
    ) -> None:
        super().__init__(link, _wire.metrics_interest(prefix), _wire.REPORT_EVERY)
        self._meter = meter
        # Under a policy the subject must name the connection's identity (its grants
        # allow only that), whatever the client calls itself; in dev mode, its name.
        base, slash, instance = name.partition("/")
        sender = identity_of(link.new_inbox(), base) + slash + instance
        self._subject = _wire.reporter_subject(prefix, sender, meter.epoch)
        self._zone = zone

    async def _publish(self) -> None:
        rows = self._meter.rows()
        if rows:
            zone = self._zone()
            body = _wire.summary(
                self._meter.epoch, _wire.identity_token(zone) if zone else "", rows
            )
            await self._link.publish(self._subject, body)


class Tap(_WhileInterested):
    """Keeps a sample of one instance's requests while somebody watches its service."""

    def __init__(self, link: Link, *, prefix: str, service: str, instance: str) -> None:
        super().__init__(link, _wire.tap_interest(prefix, service), _wire.TAP_FLUSH_EVERY)
        self._subject = _wire.tap_subject(prefix, service, instance)
        self._held: list[tuple[str, str, int, float, str, float]] = []

    def record(
        self,
        endpoint: str,
        headers: dict[str, str] | None,
        status: int,
        started_ns: int,
    ) -> None:
        """One finished request (call only while :attr:`on`); beyond a batch's worth
        per flush the rest are left out: a tap is a sample, not a log.
        """
        if len(self._held) >= _wire.MAX_TAP_BATCH:
            return
        caller = headers.get(_headers.CALLER, "") if headers else ""
        parent = headers.get(_headers.TRACEPARENT, "") if headers else ""
        trace_id = parent[3:35] if len(parent) >= 35 else ""
        latency_ms = (time.perf_counter_ns() - started_ns) / 1e6
        self._held.append(
            (
                endpoint,
                _wire.identity_token(caller) if caller else "-",
                status,
                latency_ms,
                trace_id if trace_id.isalnum() else "",
                time.time(),
            )
        )

    async def _publish(self) -> None:
        if self._held:
            batch, self._held = self._held, []
            await self._link.publish(self._subject, _wire.samples(batch))


class FailureLog(_WhileInterested):
    """An instance's recent failed requests (the last :data:`FAILURES_PER_ENDPOINT` of
    each endpoint), published while an observer asks: only those it has not yet sent,
    and all of them to an observer that appears after a silence.

    Recording is on the error path only (a reply is being built and sent there anyway),
    so a mesh without an observer pays nothing per request for it.
    """

    def __init__(self, link: Link, *, prefix: str, service: str, instance: str) -> None:
        super().__init__(link, _wire.metrics_interest(prefix), _wire.REPORT_EVERY)
        self._subject = _wire.errors_subject(prefix, service, instance)
        self._recent: dict[str, deque[_wire.Failure]] = {}
        self._seq = 0
        self._sent = 0

    def record(
        self,
        endpoint: str,
        code: int,
        kind: str,
        message: str,
        causes: tuple[Cause, ...],
        trace_id: str,
    ) -> None:
        self._seq += 1
        ring = self._recent.get(endpoint)
        if ring is None:
            ring = self._recent[endpoint] = deque(maxlen=FAILURES_PER_ENDPOINT)
        failure = _wire.Failure(
            self._seq, time.time(), endpoint, code, kind, clean_message(message), trace_id, causes
        )
        ring.append(failure)

    async def _on_interest(self, msg: Msg) -> None:
        if not self.on:
            self._sent = 0  # an observer (re)appears: it gets everything kept
        await super()._on_interest(msg)

    async def _publish(self) -> None:
        new = sorted(
            (f for ring in self._recent.values() for f in ring if f.seq > self._sent),
            key=lambda f: f.seq,
        )
        if new:
            self._sent = new[-1].seq
            await self._link.publish(self._subject, _wire.failures(new))


FAILURES_PER_ENDPOINT = 8


async def _unsubscribe(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception as exc:  # a closed connection has no subscriptions left to end
        log.debug("observe: unsubscribe: %s", exc)
