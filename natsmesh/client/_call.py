"""One call under its service's policy: the attempt loop of the Mesh client.

    start (faults, subset and failover chain, mirror: ``_planner.start``)
    → per try: a target (``_targets``), headers with the try's budget, a send
      (hedged for idempotent endpoints: ``_exchange``)
    → the outcome to ``_planner.decide``: return the raw reply, retry (where,
      after what pause), ask ``$SRV`` where the endpoint lives, or raise

The loop only executes plans; every decision is the planner's. It returns the
raw reply (``Mesh`` decodes it, and raises the error an error reply carries).
"""

from __future__ import annotations

import logging
import random
import time

import anyio

from natsmesh.client._exchange import Exchange, Failed, deadline_error
from natsmesh.client._replies import encode_payload
from natsmesh.client._resolve import Resolver
from natsmesh.client._running import Call, Running
from natsmesh.client._targets import Route, Silence, Target, Targets
from natsmesh.traffic._planner import (
    PLAIN,
    PROCESSED_NAMES,
    Action,
    Plan,
    Why,
    decide,
    start,
)
from natsmesh.traffic._routes import ServicePolicy
from natsmesh.traffic._traffic import ServiceTraffic
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Msg, Requester
from natsmesh.wire import _headers
from natsmesh.wire._codec import Codec
from natsmesh.wire._control import RegistryTable
from natsmesh.wire._errors import NoResponders, RemoteError
from natsmesh.wire._subjects import Subjects

log = logging.getLogger("natsmesh.client")

# How long a retry after a blind timeout waits to learn which instances are silent.
_PROBE_WAIT = 0.25


class Caller:
    """Runs calls for one Mesh client."""

    def __init__(
        self,
        link: Link,
        requester: Requester,
        subjects: Subjects,
        *,
        name: str,
        rng: random.Random,
        resolver: Resolver,
    ) -> None:
        self._requester = requester
        self._subjects = subjects
        self._name = name
        self._rng = rng
        self._resolver = resolver
        self.traffic: dict[str, ServiceTraffic] = {}
        self.targets = Targets(subjects, rng, Silence(link))
        self._exchange = Exchange(link, requester, subjects, self.targets, name=name)

    @property
    def zone(self) -> str:
        return self.targets.zone

    @zone.setter
    def zone(self, zone: str) -> None:
        self.targets.zone = zone

    def traffic_for(self, service: str, policy: ServicePolicy) -> ServiceTraffic:
        traffic = self.traffic.get(service)
        if traffic is None:
            traffic = self.traffic[service] = ServiceTraffic(policy)
        else:
            traffic.follow(policy)
        return traffic

    async def run(
        self, call: Call, policy: ServicePolicy, registry: RegistryTable | None
    ) -> tuple[Route, Msg, str | None]:
        """Send ``call`` until a plan returns a reply (raw: perhaps an error reply),
        the route it came by and the subset of its last try; raises NoResponders,
        DeadlineExceeded, InstanceLost, PermissionDenied, or the RemoteError of an
        injected fault.
        """
        run = self._running(call, policy, registry)
        if not run.route.subject:
            await self._resolve(run)
        traffic = run.traffic
        if not traffic.plain:
            await self._start(run)
        exchange, silence = self._exchange, self.targets.silence
        while True:
            if run.state is None and run.registry is not None and silence.due(run.route.service):
                await self._ask_silent(run)
            target, headers, timeout = self._aim(run)
            try:
                if run.begin.hedge:
                    return (
                        run.route,
                        await exchange.hedged(run, target, headers, timeout),
                        run.subset,
                    )
                return run.route, await exchange.send(run, target, headers, timeout), run.subset
            except Failed as failed_now:
                failed = failed_now
            now = time.monotonic()
            retries = traffic.policy.retries
            budget = traffic.retry_budget
            plan = decide(
                run.planned(),
                failed.outcome,
                budget_left=budget.available(now),
                now=now,
                deadline=call.deadline,
                base=retries.backoff,
                cap=retries.max_backoff,
                rng=self._rng,
            )
            if plan.action is Action.RETRY:
                await self._prepare_retry(run, plan, failed, now)
            elif plan.action is Action.REROUTE and await self._reroute(run):
                continue
            else:
                if plan.why is Why.BUDGET:
                    budget.exhausted += 1
                if failed.msg is not None:
                    return run.route, failed.msg, run.subset  # an error reply: Mesh raises it
                raise failed.error_for(run, plan.why)

    def _running(
        self, call: Call, policy: ServicePolicy, registry: RegistryTable | None
    ) -> Running:
        route = call.route
        traffic = self.traffic.get(route.service)
        if traffic is None or traffic.policy is not policy:
            traffic = self.traffic_for(route.service, policy)
        if registry is not None and registry is not traffic.registry:
            traffic.follow_registry(registry)
        traffic.counters.requests += 1
        traffic.retry_budget.request(time.monotonic())
        idempotent = traffic.idempotent.get(route.endpoint, False)
        retries = policy.retries
        attempts = 1 if call.upstream_retries else retries.attempts
        # Only retries of requests that may have been processed multiply work down
        # a call chain; only those make the callee's own calls stop retrying.
        retrying = idempotent and attempts > 1 and not retries.retry_on.isdisjoint(PROCESSED_NAMES)
        return Running(
            call,
            traffic,
            registry,
            attempts,
            idempotent,
            retrying or call.upstream_retries,
            # A per-try timeout only helps where a timed-out try may be tried again.
            retries.per_try_timeout if idempotent and attempts > 1 else None,
            call.headers.get(policy.hash_header) if policy.hash_header else None,
        )

    async def _ask_silent(self, run: Running) -> None:
        """Before a first try in queue mode: ask again who is silent (it is due)."""
        assert run.registry is not None
        left = run.call.deadline - time.monotonic()
        await self.targets.silence.probe(run.route.service, run.registry, min(_PROBE_WAIT, left))

    def _aim(self, run: Running) -> tuple[Target, dict[str, str], float]:
        """The next try's target, headers and timeout; raises DeadlineExceeded when no
        time is left for it.
        """
        call = run.call
        left = call.deadline - time.monotonic()
        if left <= 0.0005:
            raise deadline_error(run.route)
        state = run.state
        if state is None:  # the first try
            target = self.targets.choose(
                run.route, run.traffic, run.registry, run.begin.chain[0], key=run.key
            )
            attempt = 1
        else:
            target = self.targets.choose(
                run.route,
                run.traffic,
                run.registry,
                state.subset,
                exclude=state.tried,
                by_name=state.by_name,
                key=run.key,
            )
            attempt = state.attempt
        # The callee is told what this try will wait for, not the whole budget: its
        # nested calls inherit the truth, and it drops work this try has given up on.
        timeout = min(run.per_try, left) if run.per_try else left
        return target, self._headers(call, run.route, timeout, attempt, run.retrying), timeout

    async def _start(self, run: Running) -> None:
        """Before the first try of a policy with more than a target: faults, the
        subset and its failover chain, the mirror.
        """
        call, policy, traffic = run.call, run.traffic.policy, run.traffic
        now = time.monotonic()
        begin = start(
            policy,
            call.headers,
            idempotent=run.idempotent,
            conventional=run.route.conventional,
            rng=self._rng,
        )
        run.begin = begin
        if policy.hedging is not None:
            traffic.hedge_budget.request(now)
        if begin.delay:
            traffic.counters.faults += 1
            await anyio.sleep(min(begin.delay, max(0.0, call.deadline - now)))
        if begin.abort is not None:
            traffic.counters.faults += 1
            route = run.route
            raise RemoteError(
                "fault injected",
                code=begin.abort,
                kind="fault",
                service=route.service,
                endpoint=route.endpoint,
                subject=route.subject,
            )
        if begin.mirror is not None:
            route = run.route
            subject = self._subjects.subset(route.service, begin.mirror, route.endpoint)
            left = call.deadline - time.monotonic()
            headers = self._headers(call, route, left, 1, call.upstream_retries)
            # No reply subject: the shadow's answer goes nowhere, and costs the caller
            # nothing. Its own subject: a shadow never listens where the primary does,
            # so "no responders" for the primary stays instant.
            await self._requester.publish(subject, run.body, headers)
            traffic.counters.mirrored += 1

    async def _prepare_retry(self, run: Running, plan: Plan, failed: Failed, now: float) -> None:
        counters = run.traffic.counters
        run.planned().follow(plan, failed.outcome)
        if plan.failover:
            counters.failovers += 1
        if plan.spend:
            run.traffic.retry_budget.spend(now)
            counters.retries += 1
        if plan.pause:
            await anyio.sleep(plan.pause)
        if plan.probe and run.registry is not None:
            wait = min(_PROBE_WAIT, run.call.deadline - time.monotonic())
            if wait > 0:
                await self.targets.silence.probe(run.route.service, run.registry, wait)

    async def _resolve(self, run: Running) -> None:
        """A route with no subject yet: ask ``$SRV`` before the first try."""
        if not await self._reroute(run):
            route = run.route
            raise NoResponders(
                f"no responders for {run.call.target}",
                service=route.service,
                endpoint=route.endpoint,
                subject="",
            )

    async def _reroute(self, run: Running) -> bool:
        """Perhaps a micro service outside the natsmesh convention: ask ``$SRV`` once.
        True when the call starts over on the route found.
        """
        state = run.planned()
        if not state.can_reroute:
            return False
        found = await self._resolver.reroute(run.call.target, run.route, run.call.deadline)
        if found is None or not found.subject:
            state.can_reroute = False
            return False
        if found.codec is not run.route.codec:
            run.body = encode_payload(run.call.payload, found.codec)
        run.route = found
        state.rerouted()
        if not found.conventional:
            state.chain = PLAIN.chain  # a service found through $SRV has no subsets
        return True

    def _headers(
        self, call: Call, route: Route, left: float, attempt: int, retrying: bool
    ) -> dict[str, str]:
        headers = {_headers.BUDGET: _headers.format_budget(left), _headers.CALLER: self._name}
        if call.traceparent is not None:
            headers[_headers.TRACEPARENT] = call.traceparent
        if attempt > 1:
            headers[_headers.ATTEMPT] = str(attempt)
        if retrying:
            headers[_headers.RETRYING] = "1"
        if route.codec is Codec.JSON:
            headers["Content-Type"] = "application/json"
        if call.headers:
            headers.update(call.headers)
        return headers
