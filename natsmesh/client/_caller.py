"""One call under its service's policy: the attempt loop of the Mesh client.

    fault injection → subset (header match, else weights) → failover chain → mirror
    → per attempt: target (the subset's queue group, or one instance by p2c or
      hash among those not ejected) → send with per-try timeout =
      min(per_try, remaining) → hedge after a delay (idempotent endpoints)
    → no responders: the next subset at once; timeout, overloaded, unavailable:
      try again elsewhere within the attempts and the retry budget
    → record latency and outcome (peak EWMA, outlier ejection, hedge window)

Only outcomes that prove the request was not processed (no responders,
overloaded) are retried for every endpoint; timeouts and "unavailable" errors
only for endpoints declared idempotent. A caller that retries marks its request
(``Mesh-Retrying``), and the callee's own calls then do not retry, so retries do
not multiply hop by hop. Decisions are pure functions of ``_balance`` and
``_resilience``; this module does the sending.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio

from natsmesh.client._outlier_report import QueueReporter, instance_of
from natsmesh.traffic._backoff import backoff
from natsmesh.traffic._balance import choose_subset, failover_chain
from natsmesh.traffic._routes import ServicePolicy
from natsmesh.traffic._traffic import ServiceTraffic
from natsmesh.traffic._zones import TierCache, pick
from natsmesh.transport._transport import NATS, Lost, Msg, NoReply, NoResponse, Requester
from natsmesh.wire import _headers
from natsmesh.wire._codec import Codec
from natsmesh.wire._control import RegistryTable
from natsmesh.wire._errors import (
    CallError,
    DeadlineExceeded,
    InstanceLost,
    NoResponders,
    Overloaded,
    PermissionDenied,
    RemoteError,
)
from natsmesh.wire._subjects import Subjects, srv_request_subject

log = logging.getLogger("natsmesh.client")


class _Target(NamedTuple):
    subject: str
    instance: str | None
    subset: str | None


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    endpoint: str
    subject: str
    codec: Codec
    discovered_at: float | None = None  # None: the natsmesh convention, no lookup needed
    # Where a call goes without subsets or instance choice: built once per route.
    queue_target: _Target = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queue_target", _Target(self.subject, None, None))

    @property
    def conventional(self) -> bool:
        return self.discovered_at is None


class Call(NamedTuple):
    """Everything one call needs, decided before the first send.

    A named tuple, not a frozen dataclass: as immutable, and half the cost to
    build, which on a path of a few microseconds per call counts.
    """

    route: Route
    body: bytes
    deadline: float
    headers: dict[str, str]  # the caller's own, checked
    traceparent: str | None  # None: the call continues no trace
    upstream_retries: bool  # an upstream hop already retries this request
    decode: Callable[[Route, Msg], Any]  # reply → result, or raises the error it carries


_PROCESSED = frozenset({"timeout", "unavailable"})  # retry_on kinds that may repeat work
_NO_SUBSET: tuple[str | None] = (None,)  # the failover chain of a policy without subsets
# How long a caller asks a silent instance whether it is dead or draining (see _gone).
_PING_WAIT = 0.25


class _Failed(Exception):
    """One send's outcome that may be tried again: carries the error to raise otherwise."""

    def __init__(
        self,
        error: Exception,
        *,
        processed: bool,
        no_responders: bool = False,
        instance: str | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.processed = processed  # the request may have been handled
        self.no_responders = no_responders
        self.instance = instance  # who failed, where an error reply through a queue group says


class Caller:
    """Runs calls for one Mesh client."""

    def __init__(
        self, nc: NATS, requester: Requester, subjects: Subjects, *, name: str, rng: random.Random
    ) -> None:
        self._nc = nc
        self._requester = requester
        self._subjects = subjects
        self._name = name
        self._rng = rng
        self.traffic: dict[str, ServiceTraffic] = {}
        self.zone = ""  # the caller's zone: its NATS cluster's name, or as configured
        self._tiers = TierCache()
        self._reporter = QueueReporter(nc, prefix=subjects.prefix, caller=name)

    def traffic_for(self, service: str, policy: ServicePolicy) -> ServiceTraffic:
        traffic = self.traffic.get(service)
        if traffic is None:
            traffic = self.traffic[service] = ServiceTraffic(policy)
        else:
            traffic.follow(policy)
        return traffic

    async def run(self, call: Call, policy: ServicePolicy, registry: RegistryTable | None) -> Any:
        route = call.route
        traffic = self.traffic.get(route.service)
        if traffic is None or traffic.policy is not policy:
            traffic = self.traffic_for(route.service, policy)
        if registry is not None and registry is not traffic.registry:
            traffic.follow_registry(registry)
        counters = traffic.counters
        now = time.monotonic()
        counters.requests += 1
        traffic.retry_budget.request(now)
        idempotent = traffic.idempotent.get(route.endpoint, False)
        retries = policy.retries
        attempts = 1 if call.upstream_retries else retries.attempts
        # A per-try timeout only helps where a timed-out try may be tried again.
        per_try = retries.per_try_timeout if idempotent and attempts > 1 else None
        # Only retries of requests that may have been processed multiply work down
        # a call chain; only those make the callee's own calls stop retrying.
        retries_processed = (
            idempotent and attempts > 1 and not retries.retry_on.isdisjoint(_PROCESSED)
        )
        chain: tuple[str | None, ...] | list[str | None] = _NO_SUBSET
        hedged = False
        if not traffic.plain:
            chain, hedged = await self._plan(call, policy, traffic, idempotent, now)
        position, attempt, gone = 0, 0, 0
        tried: set[str] = set()
        while True:
            attempt += 1
            left = call.deadline - time.monotonic()
            if left <= 0.0005:
                raise _deadline(route)
            target = self._target(route, policy, traffic, registry, chain[position], call, tried)
            # The callee is told what this try will wait for, not the whole budget: its
            # nested calls inherit the truth, and it drops work this try has given up on.
            try_timeout = min(per_try, left) if per_try else left
            headers = self._headers(call, try_timeout, attempt, retrying=retries_processed)
            try:
                if hedged:
                    return await self._exchange(
                        call, target, traffic, registry, headers, try_timeout, chain[position]
                    )
                return await self._send(call, target, traffic, registry, headers, try_timeout)
            except _Failed as failed:
                if target.instance is not None:
                    tried.add(target.instance)
                elif failed.instance is not None:
                    tried.add(failed.instance)  # the queue group's pick: retry elsewhere
                if failed.no_responders and target.instance is not None and gone < len(tried):
                    # That instance is gone (the registry lags): another one, at once.
                    gone += 1
                    counters.failovers += 1
                    attempt -= 1
                    continue
                if failed.no_responders and position + 1 < len(chain):
                    position += 1  # nobody serves this subset: the next one, at once
                    counters.failovers += 1
                    attempt -= 1
                    continue
                if failed.no_responders and position:
                    raise _no_responders_in(failed.error, chain[: position + 1]) from None
                kind = _retry_kind(failed)
                allowed = kind in retries.retry_on and (not failed.processed or idempotent)
                if not allowed or attempt >= attempts:
                    raise failed.error from None
                if not traffic.retry_budget.try_spend(time.monotonic()):
                    raise failed.error from None
                if kind == "timeout" and position + 1 < len(chain):
                    position += 1  # a slow subset: fail over to the next target
                    counters.failovers += 1
                counters.retries += 1
                pause = backoff(retries.backoff, retries.max_backoff, attempt, self._rng)
                if time.monotonic() + pause >= call.deadline:
                    raise failed.error from None
                await anyio.sleep(pause)

    async def _plan(
        self,
        call: Call,
        policy: ServicePolicy,
        traffic: ServiceTraffic,
        idempotent: bool,
        now: float,
    ) -> tuple[list[str | None] | tuple[str | None, ...], bool]:
        """Before the first try of a policy with more than a target: faults, the subset
        and its failover chain, the mirror; returns the chain and whether to hedge.
        """
        route = call.route
        if policy.hedging is not None:
            traffic.hedge_budget.request(now)
        if policy.fault is not None:
            await self._inject_fault(policy, traffic, call)
        subset = None
        if (policy.subsets or policy.matches) and route.conventional:
            subset = choose_subset(policy.subsets, policy.matches, call.headers, self._rng.random())
        chain = failover_chain(subset, policy.failover) if policy.failover else (subset,)
        if policy.mirror is not None and route.conventional:
            await self._mirror(call, policy, traffic)
        return chain, idempotent and policy.hedging is not None

    # -- one try, perhaps hedged ------------------------------------------------------

    async def _exchange(
        self,
        call: Call,
        target: _Target,
        traffic: ServiceTraffic,
        registry: RegistryTable | None,
        headers: dict[str, str],
        try_timeout: float,
        subset: str | None,
    ) -> Any:
        delay = traffic.hedge_delay(call.route.endpoint)
        if delay is None or delay >= try_timeout:
            return await self._send(call, target, traffic, registry, headers, try_timeout)
        loop = asyncio.get_running_loop()
        first = loop.create_task(self._send(call, target, traffic, registry, headers, try_timeout))
        done, _ = await asyncio.wait((first,), timeout=delay)
        if done or not traffic.hedge_budget.try_spend(time.monotonic()):
            return await first
        exclude = {target.instance} if target.instance else set()
        second_target = self._target(
            call.route, traffic.policy, traffic, registry, subset, call, exclude
        )
        traffic.counters.hedges += 1
        # The copy waits less than the first try, and its callee is told so.
        left = try_timeout - delay
        second_headers = {**headers, _headers.BUDGET: _headers.format_budget(left)}
        second = loop.create_task(
            self._send(call, second_target, traffic, registry, second_headers, left)
        )
        pending = {first, second}
        failure: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        if task is second:
                            traffic.counters.hedge_wins += 1
                        return task.result()
                    failure = failure or task.exception()
            assert failure is not None
            raise failure
        finally:
            # The loser is abandoned here; its service drops it when its budget ends.
            for task in pending:
                task.cancel()

    async def _send(
        self,
        call: Call,
        target: _Target,
        traffic: ServiceTraffic,
        registry: RegistryTable | None,
        headers: dict[str, str],
        timeout: float,
    ) -> Any:
        route = call.route
        instance = target.instance
        if instance is not None:
            traffic.started(instance)
        started = time.monotonic()
        ok = False
        try:
            try:
                msg = await self._requester.request(
                    target.subject, call.body, timeout=timeout, headers=headers
                )
            except NoResponse:
                ok = True  # gone, not slow: no outlier evidence
                if instance is not None:
                    await self._gone(route, traffic, instance, call.deadline)
                raise _Failed(
                    NoResponders(
                        f"no responders for {route.service}.{route.endpoint}"
                        + (f" in subset {target.subset}" if target.subset else ""),
                        service=route.service,
                        endpoint=route.endpoint,
                        subject=target.subject,
                        subset=target.subset,
                    ),
                    processed=False,
                    no_responders=True,
                ) from None
            except NoReply:
                raise _Failed(_deadline(route), processed=True) from None
            except Lost:
                lost = InstanceLost(
                    f"instance {instance} of {route.service} is gone: the reply to"
                    f" {route.service}.{route.endpoint} will never come",
                    service=route.service,
                    endpoint=route.endpoint,
                    subject=target.subject,
                )
                raise _Failed(lost, processed=True) from None
            try:
                result = call.decode(route, msg)
            except Overloaded as exc:
                raise _Failed(exc, processed=False) from None
            except RemoteError as exc:
                named = None
                if instance is None and exc.code >= 500:
                    # Through a queue group: only the error reply names the instance.
                    named = instance_of(msg.headers)
                    if named is not None:
                        await self._reporter.failed(route.service, named, traffic, registry)
                if exc.code in (502, 503):
                    raise _Failed(exc, processed=True, instance=named) from None
                ok = exc.code < 500
                raise
            ok = True
            if traffic.learns_latency:
                traffic.window(route.endpoint).add(time.monotonic() - started)
            return result
        finally:
            # Every try counts, timeouts first of all: they are what p2c and
            # outlier ejection must learn from.
            if instance is not None:
                now = time.monotonic()
                population = len(registry.instances) if registry is not None else 0
                traffic.finished(instance, now - started, ok, now, population)

    async def _gone(
        self, route: Route, traffic: ServiceTraffic, instance: str, deadline: float
    ) -> None:
        """No responders on ``instance``'s own subject: no call of this client chooses it
        any more, until the registry announces it again.

        Dead, or draining (it stops listening there first, but answers what it already
        took)? Its ``$SRV.PING`` tells: an instance that answers nothing at all is dead,
        and its requests still waiting for a reply fail at once (retried where that is
        safe) instead of waiting out their budgets.
        """
        if not traffic.mark_gone(instance, time.monotonic()):
            return
        wait = min(_PING_WAIT, deadline - time.monotonic())
        if wait <= 0:
            return
        try:
            await self._requester.request(
                srv_request_subject("PING", route.service, instance),
                b"",
                timeout=wait,
                headers=None,
            )
        except NoResponse:
            lost = self._requester.lose(self._subjects.instance_prefix(route.service, instance))
            log.info(
                "%s/%s is gone (no responders): out of choice, %d waiting requests failed",
                route.service,
                instance,
                lost,
            )
        except (NoReply, PermissionDenied):
            pass  # no proof either way: its requests wait for their replies or budgets
        else:
            log.info("%s/%s is draining: out of choice", route.service, instance)

    # -- choices -------------------------------------------------------------------------

    def _target(
        self,
        route: Route,
        policy: ServicePolicy,
        traffic: ServiceTraffic,
        registry: RegistryTable | None,
        subset: str | None,
        call: Call,
        exclude: set[str],
    ) -> _Target:
        # Queue mode lets the queue group pick, except for a retry after an instance
        # named itself in an error reply: that retry goes to another instance, by name,
        # or the group could hand it to the same one again.
        by_queue = policy.load_balancer == "queue" and not exclude
        if subset is None:
            if registry is None or by_queue or not route.conventional:
                return route.queue_target
            queue = route.subject
        else:
            queue = self._subjects.subset(route.service, subset, route.endpoint)
            if by_queue or registry is None or not route.conventional:
                return _Target(queue, None, subset)
        key = call.headers.get(policy.hash_header or "") if policy.load_balancer == "hash" else None
        now = time.monotonic()
        outliers = traffic.outliers
        # Own zone first, then the route's zone order, then any: see _zones.
        chosen = pick(
            self._tiers.get(registry, subset, route.endpoint, self.zone, policy.zones),
            exclude=exclude,
            ejected=lambda instance: outliers.ejected(instance, now),
            load=traffic.load,
            rng=self._rng,
            key=key,
            gone=traffic.gone_now(now),
        )
        if chosen.instance is None:
            # Every known instance was tried: perhaps new ones the registry does not
            # show yet serve the queue group.
            return _Target(queue, None, subset)
        if chosen.tier:
            traffic.counters.zone_failovers += 1
        subject = self._subjects.instance(route.service, chosen.instance, route.endpoint)
        return _Target(subject, chosen.instance, subset)

    def _headers(self, call: Call, left: float, attempt: int, *, retrying: bool) -> dict[str, str]:
        headers = {_headers.BUDGET: _headers.format_budget(left), _headers.CALLER: self._name}
        if call.traceparent is not None:
            headers[_headers.TRACEPARENT] = call.traceparent
        if attempt > 1:
            headers[_headers.ATTEMPT] = str(attempt)
        if retrying or call.upstream_retries:
            headers[_headers.RETRYING] = "1"
        if call.route.codec is Codec.JSON:
            headers["Content-Type"] = "application/json"
        if call.headers:
            headers.update(call.headers)
        return headers

    async def _inject_fault(
        self, policy: ServicePolicy, traffic: ServiceTraffic, call: Call
    ) -> None:
        fault = policy.fault
        if fault is None:
            return
        if fault.delay and fault.delay_percent and self._rng.random() * 100 < fault.delay_percent:
            traffic.counters.faults += 1
            await anyio.sleep(min(fault.delay, max(0.0, call.deadline - time.monotonic())))
        if (
            fault.abort_code
            and fault.abort_percent
            and self._rng.random() * 100 < fault.abort_percent
        ):
            traffic.counters.faults += 1
            route = call.route
            raise RemoteError(
                "fault injected",
                code=fault.abort_code,
                kind="fault",
                service=route.service,
                endpoint=route.endpoint,
                subject=route.subject,
            )

    async def _mirror(self, call: Call, policy: ServicePolicy, traffic: ServiceTraffic) -> None:
        mirror = policy.mirror
        assert mirror is not None
        if self._rng.random() * 100 >= mirror.percent:
            return
        route = call.route
        subject = self._subjects.subset(route.service, mirror.subset, route.endpoint)
        headers = self._headers(call, call.deadline - time.monotonic(), 1, retrying=False)
        # No reply subject: the shadow's answer goes nowhere, and costs the caller nothing.
        # Its own subject: a shadow never listens where the primary does, so "no
        # responders" for the primary stays instant.
        await self._nc.publish(subject, call.body, headers=headers)
        traffic.counters.mirrored += 1


def _retry_kind(failed: _Failed) -> str:
    if failed.no_responders:
        return "no_responders"
    if isinstance(failed.error, Overloaded):
        return "overloaded"
    if isinstance(failed.error, DeadlineExceeded):
        return "timeout"
    return "unavailable"  # 502 and 503 replies, and an instance lost with the request


def _no_responders_in(error: Exception, subsets: Sequence[str | None]) -> Exception:
    """The no responders of the last subset of a failover chain, naming every one tried."""
    if not isinstance(error, NoResponders):
        return error
    names = ", ".join(s for s in subsets if s)
    return NoResponders(
        f"no responders for {error.service}.{error.endpoint} in subsets {names}",
        service=error.service,
        endpoint=error.endpoint,
        subject=error.subject,
        subset=error.subset,
    )


def _deadline(route: Route) -> CallError:
    return DeadlineExceeded(
        f"deadline exceeded calling {route.service}.{route.endpoint}",
        service=route.service,
        endpoint=route.endpoint,
        subject=route.subject,
    )
