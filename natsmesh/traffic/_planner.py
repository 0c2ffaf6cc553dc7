"""The retry planner: after each try of a call, what to do next. Pure.

The caller's loop (``natsmesh.client._call``) sends, classifies what came back
as an :class:`Outcome`, and asks :func:`decide` for a :class:`Plan`: return the
reply, try again (where: the same subset or the next of the failover chain, by
name or through the queue group, after how long), ask ``$SRV`` where the
endpoint lives, or raise. :func:`start` makes the choices taken once before the
first try (fault injection, subset, failover chain, mirror, hedging), and
:func:`hedge_after` when a second copy goes out.

No I/O, no clock and no randomness of its own: ``now``, the deadline, the budget
state and a random source are passed in, and the call's :class:`CallState` is
only read; the loop applies a plan with :meth:`CallState.follow`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from natsmesh.traffic._backoff import backoff
from natsmesh.traffic._balance import choose_subset, failover_chain
from natsmesh.traffic._routes import ServicePolicy


class Kind(enum.Enum):
    """What one try came back with."""

    OK = "ok"  # a reply that is not an error
    ERROR = "error"  # an error reply that no retry can help (4xx, 500, ...)
    NO_RESPONDERS = "no_responders"  # nobody listens: nothing was processed
    OVERLOADED = "overloaded"  # shed before processing
    TIMEOUT = "timeout"  # no reply within the try's timeout: may have been processed
    UNAVAILABLE = "unavailable"  # a 502/503 reply, or the instance lost with the request


#: Kinds after which the request may have been handled: retried for idempotent endpoints only.
PROCESSED: frozenset[Kind] = frozenset({Kind.TIMEOUT, Kind.UNAVAILABLE})
#: ``retry_on`` names of the kinds that may repeat work down a call chain.
PROCESSED_NAMES: frozenset[str] = frozenset(k.value for k in PROCESSED)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One try's result: its kind, and the instance it reached if that is known.

    ``named`` says the try was sent to ``instance`` by name; otherwise ``instance``
    is the one an error reply through a queue group named (or None).
    """

    kind: Kind
    instance: str | None = None
    named: bool = False


class Action(enum.Enum):
    RETURN = "return"  # hand the reply to the client (it decodes, or raises its error)
    RETRY = "retry"  # send again, as the plan says
    REROUTE = "reroute"  # ask $SRV where the endpoint lives, then start over there
    RAISE = "raise"  # raise this try's error


class Why(enum.Enum):
    """Why a plan raises (or reroutes): what the loop tells the caller."""

    NONE = "none"
    NOT_RETRYABLE = "not_retryable"  # the kind is not in retry_on, or not idempotent
    ATTEMPTS = "attempts"  # every try allowed was made
    BUDGET = "budget"  # the retry budget is spent
    DEADLINE = "deadline"  # no time for the backoff and another try
    CHAIN = "chain"  # no responders in every subset of the failover chain


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do after a try.

    For RETRY: ``position`` in the failover chain, whether the try counts against
    ``attempts`` and draws on the retry budget (``spend``), the ``pause`` before it,
    whether it goes to a named instance even in queue mode (``by_name``), and whether
    to first learn which instances are not answering (``probe``: a timeout through a
    queue group names nobody).
    """

    action: Action
    why: Why = Why.NONE
    position: int = 0
    counted: bool = False
    spend: bool = False
    pause: float = 0.0
    failover: bool = False
    gone: bool = False  # a named instance had no responders: it is gone
    by_name: bool = False
    probe: bool = False


RETURN = Plan(Action.RETURN)


@dataclass(slots=True)
class CallState:
    """One call's progress: the loop keeps it, the planner reads it."""

    attempts: int  # tries allowed, the first included
    idempotent: bool
    retry_on: frozenset[str]
    chain: tuple[str | None, ...] | list[str | None]
    queue: bool = False  # queue mode with a known registry: retries may go by name
    can_reroute: bool = False  # a $SRV lookup may still find the endpoint elsewhere
    attempt: int = 1  # the try under way, 1-based
    position: int = 0  # its subset's index in ``chain``
    gone: int = 0  # tries that found a named instance gone (not counted as attempts)
    by_name: bool = False  # the next try goes to a named instance, even in queue mode
    tried: set[str] = field(default_factory=set)  # instances that failed this call

    @property
    def subset(self) -> str | None:
        return self.chain[self.position]

    def follow(self, plan: Plan, outcome: Outcome) -> None:
        """Apply ``plan`` (made for ``outcome``) before the next try."""
        if outcome.instance is not None:
            self.tried.add(outcome.instance)
        self.position = plan.position
        if plan.counted:
            self.attempt += 1
        if plan.gone:
            self.gone += 1
        self.by_name = self.by_name or plan.by_name

    def rerouted(self) -> None:
        """The endpoint was found elsewhere through $SRV: start over there, once."""
        self.can_reroute = False
        self.attempt, self.position, self.gone = 1, 0, 0
        self.tried.clear()


_NO_SUBSET: tuple[str | None] = (None,)


def decide(
    state: CallState,
    outcome: Outcome,
    *,
    budget_left: bool,
    now: float,
    deadline: float,
    base: float,
    cap: float,
    rng: random.Random,
) -> Plan:
    """The plan after ``outcome``, for a call in ``state``.

    ``budget_left``: the retry budget has a retry to give; ``base`` and ``cap`` are
    the backoff's; ``rng`` draws its jitter.
    """
    kind = outcome.kind
    if kind is Kind.OK or kind is Kind.ERROR:
        return RETURN
    position, chain = state.position, state.chain
    if kind is Kind.NO_RESPONDERS:
        tried = len(state.tried) + (outcome.instance not in state.tried if outcome.instance else 0)
        if outcome.named and state.gone < tried:
            # That instance is gone (the registry lags): another one, at once.
            return Plan(Action.RETRY, position=position, failover=True, gone=True)
        if position + 1 < len(chain):
            # Nobody serves this subset: the next one, at once.
            return Plan(Action.RETRY, position=position + 1, failover=True)
        if position:
            return _give_up(state, kind, Why.CHAIN)
    if kind.value not in state.retry_on or (kind in PROCESSED and not state.idempotent):
        return _give_up(state, kind, Why.NOT_RETRYABLE)
    if state.attempt >= state.attempts:
        return _give_up(state, kind, Why.ATTEMPTS)
    pause = backoff(base, cap, state.attempt, rng)
    if now + pause >= deadline:
        return _give_up(state, kind, Why.DEADLINE)
    if not budget_left:
        return _give_up(state, kind, Why.BUDGET)
    # A slow subset: fail over to the next target of the chain.
    failover = kind is Kind.TIMEOUT and position + 1 < len(chain)
    # A timeout through a queue group names nobody, and the group could hand the retry
    # to the same frozen instance: the retry goes by name, to one that answers.
    blind = kind is Kind.TIMEOUT and state.queue and not outcome.named
    return Plan(
        Action.RETRY,
        position=position + 1 if failover else position,
        counted=True,
        spend=True,
        pause=pause,
        failover=failover,
        by_name=state.queue and (blind or outcome.instance is not None),
        probe=blind,
    )


def _give_up(state: CallState, kind: Kind, why: Why) -> Plan:
    # No responders may mean a micro service outside the natsmesh subject convention.
    if kind is Kind.NO_RESPONDERS and state.can_reroute:
        return Plan(Action.REROUTE, why=why, position=state.position)
    return Plan(Action.RAISE, why=why, position=state.position)


@dataclass(frozen=True, slots=True)
class Start:
    """The choices made once, before a call's first try."""

    chain: tuple[str | None, ...] | list[str | None] = _NO_SUBSET
    delay: float = 0.0  # injected delay
    abort: int | None = None  # injected error code
    mirror: str | None = None  # the subset a copy goes to
    hedge: bool = False


PLAIN = Start()


def start(
    policy: ServicePolicy,
    headers: Mapping[str, str],
    *,
    idempotent: bool,
    conventional: bool,
    rng: random.Random,
) -> Start:
    """Fault injection, the subset and its failover chain, the mirror, and hedging.

    Draws from ``rng`` in a fixed order: delay, abort, subset, mirror.
    """
    delay, abort = 0.0, None
    fault = policy.fault
    if fault is not None:
        if fault.delay and fault.delay_percent and rng.random() * 100 < fault.delay_percent:
            delay = fault.delay
        if fault.abort_code and fault.abort_percent and rng.random() * 100 < fault.abort_percent:
            abort = fault.abort_code
    subset = None
    if (policy.subsets or policy.matches) and conventional:
        subset = choose_subset(policy.subsets, policy.matches, headers, rng.random())
    chain = failover_chain(subset, policy.failover) if policy.failover else (subset,)
    mirror = None
    if policy.mirror is not None and conventional and rng.random() * 100 < policy.mirror.percent:
        mirror = policy.mirror.subset
    hedge = idempotent and policy.hedging is not None
    return Start(chain, delay, abort, mirror, hedge)


def hedge_after(delay: float | None, try_timeout: float) -> float | None:
    """Seconds after which a try gets a second copy; None: no copy (no delay known
    yet, or the try would time out first).
    """
    if delay is None or delay >= try_timeout:
        return None
    return delay
