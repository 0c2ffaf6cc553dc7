"""One try of a call: a send (perhaps hedged with a second copy) and its outcome.

A reply comes back raw: a result, or an error reply that no retry can help (the
client decodes it and raises its error). Anything the planner may retry is raised
as :class:`Failed`, carrying its :class:`~natsmesh.traffic._planner.Outcome` and
the error (or error reply) to give up with. Every try's latency and outcome is
recorded for p2c and outlier ejection; a named instance that has no responders
is proven gone (see :meth:`Exchange.gone`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Final

import anyio

from natsmesh.client._outlier_report import QueueReporter, instance_of
from natsmesh.client._replies import error_code
from natsmesh.client._running import Running
from natsmesh.client._targets import Route, Target, Targets
from natsmesh.traffic._planner import Kind, Outcome, Why, hedge_after
from natsmesh.traffic._traffic import Counters
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Lost, Msg, NoReply, NoResponse, Requester
from natsmesh.wire import _headers
from natsmesh.wire._control import RegistryTable
from natsmesh.wire._errors import (
    CallError,
    DeadlineExceeded,
    ErrorKind,
    InstanceLost,
    NoResponders,
    PermissionDenied,
)
from natsmesh.wire._subjects import Subjects, srv_request_subject

log = logging.getLogger("natsmesh.client")

# How long a caller asks a silent instance whether it is dead or draining (see gone).
_PING_WAIT: Final = 0.25


class Failed(Exception):
    """A try the planner may retry: its outcome, and what to give up with otherwise
    (``msg``, an error reply for the client to raise, else ``error``).
    """

    def __init__(
        self, outcome: Outcome, *, error: CallError | None = None, msg: Msg | None = None
    ) -> None:
        super().__init__(outcome.kind.value)
        self.outcome = outcome
        self.error = error
        self.msg = msg

    def error_for(self, run: Running, why: Why) -> CallError:
        """The error to raise when the plan gives up for ``why``."""
        assert self.error is not None
        if why is Why.CHAIN:
            return _no_responders_in(self.error, run.chain[: run.position + 1])
        return self.error


class Exchange:
    """Sends the tries of one Mesh client's calls."""

    def __init__(
        self, link: Link, requester: Requester, subjects: Subjects, targets: Targets, *, name: str
    ) -> None:
        self._requester = requester
        self._subjects = subjects
        self._targets = targets
        self._reporter = QueueReporter(link, prefix=subjects.prefix, caller=name)
        # Requests name their caller in the subject (ctx.caller) when the registry says
        # the service runs natsmesh; others (foreign micro services, plain subscribers,
        # anything while no controller runs) know nothing of it: the plain subject.
        self._named = Subjects.caller_suffix(self._reporter.identity)

    async def hedged(
        self, run: Running, target: Target, headers: dict[str, str], timeout: float
    ) -> Msg:
        """A try with a second copy after the hedge delay; the first reply wins.

        Both copies run in a task group: the loser is cancelled (its service drops
        it when its budget ends), and a copy's failure is returned only when the
        other one failed too (the first failure to arrive).
        """
        traffic = run.traffic
        delay = hedge_after(traffic.hedge_delay(run.route.endpoint), timeout)
        if delay is None:
            return await self.send(run, target, headers, timeout)
        finished: list[tuple[bool, Msg | BaseException]] = []  # (second copy?, outcome)
        first_done = anyio.Event()

        async def contend(copy: Target, hdrs: dict[str, str], wait: float, second: bool) -> None:
            try:
                msg = await self.send(run, copy, hdrs, wait)
            except Exception as exc:  # kept, and raised after the group if both fail
                finished.append((second, exc))
            else:
                finished.append((second, msg))
                if not (msg.headers and _headers.ERROR_CODE in msg.headers):
                    tg.cancel_scope.cancel()  # a result: the other copy is not needed
            if not second:
                first_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(contend, target, headers, timeout, False)
            with anyio.move_on_after(delay):
                await first_done.wait()
            if not first_done.is_set() and traffic.hedge_budget.try_spend(time.monotonic()):
                exclude = {target.instance} if target.instance else ()
                second = self._targets.choose(
                    run.route, traffic, run.registry, target.subset, exclude=exclude, key=run.key
                )
                traffic.counters.hedges += 1
                # The copy waits less than the first try, and its callee is told so.
                left = timeout - delay
                hdrs = {**headers, _headers.BUDGET: _headers.format_budget(left)}
                tg.start_soon(contend, second, hdrs, left, True)
        return _winner(finished, traffic.counters)

    async def send(
        self, run: Running, target: Target, headers: dict[str, str], timeout: float
    ) -> Msg:
        """One copy of a try; raises Failed for what the planner may retry."""
        route, traffic = run.route, run.traffic
        instance = target.instance
        if instance is not None:
            traffic.started(instance)
        started = time.monotonic()
        ok = False
        try:
            try:
                subject = target.subject
                if route.conventional and run.registry is not None and _mesh(run.registry):
                    subject += self._named  # it knows the named subjects: see __init__
                msg = await self._requester.request(
                    subject, run.body, timeout=timeout, headers=headers
                )
            except NoResponse:
                ok = True  # gone, not slow: no outlier evidence
                if instance is not None:
                    await self.gone(route, run, instance)
                error = _no_responders(route, target)
                raise Failed(
                    Outcome(Kind.NO_RESPONDERS, instance, instance is not None), error=error
                ) from None
            except NoReply:
                raise Failed(
                    Outcome(Kind.TIMEOUT, instance, instance is not None),
                    error=deadline_error(route),
                ) from None
            except Lost:
                lost = InstanceLost(
                    f"instance {instance} of {route.service} is gone: the reply to"
                    f" {route.service}.{route.endpoint} will never come",
                    service=route.service,
                    endpoint=route.endpoint,
                    subject=target.subject,
                )
                raise Failed(Outcome(Kind.UNAVAILABLE, instance, True), error=lost) from None
            hdrs = msg.headers
            if hdrs and _headers.ERROR_CODE in hdrs:
                ok = await self._error_reply(run, target, msg, hdrs)
                return msg
            ok = True
            if traffic.learns_latency:
                traffic.window(route.endpoint).add(time.monotonic() - started)
            return msg
        finally:
            # Every try counts, timeouts first of all: they are what p2c and
            # outlier ejection must learn from.
            if instance is not None:
                now = time.monotonic()
                registry = run.registry
                population = len(registry.instances) if registry is not None else 0
                traffic.finished(instance, now - started, ok, now, population)

    async def _error_reply(
        self, run: Running, target: Target, msg: Msg, hdrs: dict[str, str]
    ) -> bool:
        """Classify an error reply: raises Failed where a retry may help, else returns
        whether it speaks for the instance's health (a 4xx does).
        """
        instance = target.instance
        kind = hdrs.get(_headers.ERROR_KIND, "")
        if kind == ErrorKind.OVERLOADED:
            raise Failed(Outcome(Kind.OVERLOADED, instance, instance is not None), msg=msg)
        if kind == ErrorKind.DEADLINE:
            return False  # the budget ran out inside: the client raises DeadlineExceeded
        code = error_code(hdrs)
        named = instance
        if instance is None and code >= 500:
            # Through a queue group: only the error reply names the instance.
            named = instance_of(hdrs)
            if named is not None:
                await self._reporter.failed(run.route.service, named, run.traffic, run.registry)
        if code in (502, 503):
            raise Failed(Outcome(Kind.UNAVAILABLE, named, instance is not None), msg=msg)
        return code < 500

    async def gone(self, route: Route, run: Running, instance: str) -> None:
        """No responders on ``instance``'s own subject: no call of this client chooses it
        any more, until the registry announces it again.

        Dead, or draining (it stops listening there first, but answers what it already
        took)? Its ``$SRV.PING`` tells: an instance that answers nothing at all is dead,
        and its requests still waiting for a reply fail at once (retried where that is
        safe) instead of waiting out their budgets.
        """
        if not run.traffic.mark_gone(instance, time.monotonic()):
            return
        wait = min(_PING_WAIT, run.call.deadline - time.monotonic())
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


def _winner(finished: list[tuple[bool, Msg | BaseException]], counters: Counters) -> Msg:
    """The first result among the copies; else the first error reply; else the first failure."""
    for second, outcome in finished:
        if isinstance(outcome, Msg) and not (
            outcome.headers and _headers.ERROR_CODE in outcome.headers
        ):
            if second:
                counters.hedge_wins += 1
            return outcome
    first = finished[0][1]
    if isinstance(first, BaseException):
        raise first
    return first


def _no_responders(route: Route, target: Target) -> NoResponders:
    return NoResponders(
        f"no responders for {route.service}.{route.endpoint}"
        + (f" in subset {target.subset}" if target.subset else ""),
        service=route.service,
        endpoint=route.endpoint,
        subject=target.subject,
        subset=target.subset,
    )


def _no_responders_in(error: CallError, subsets: Sequence[str | None]) -> CallError:
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


def deadline_error(route: Route) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"deadline exceeded calling {route.service}.{route.endpoint}",
        service=route.service,
        endpoint=route.endpoint,
        subject=route.subject,
    )


def _mesh(registry: RegistryTable) -> bool:
    """Whether the service's instances are natsmesh ones (they all are, or none)."""
    return bool(registry.instances) and registry.instances[0].mesh
