"""Where one try goes: the subset's queue group, or one instance by name.

Queue mode lets the queue group pick, except where the planner asks for a named
instance (a retry after an error reply named its instance, or after a timeout
that named nobody) or where instances are known not to answer (see
:class:`Silence`). p2c and hash choose among the registry's instances, own zone
first, leaving out those ejected, proven gone, or already failed in this call.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

import anyio

from natsmesh.client import _discovery
from natsmesh.traffic._routes import ServicePolicy
from natsmesh.traffic._traffic import ServiceTraffic
from natsmesh.traffic._zones import TierCache, pick
from natsmesh.transport._link import Link
from natsmesh.wire import _micro
from natsmesh.wire._codec import Codec
from natsmesh.wire._control import RegistryTable
from natsmesh.wire._subjects import Subjects

log = logging.getLogger("natsmesh.client")

#: Seconds before instances that did not answer ``$SRV.PING`` are asked again; until
#: then (and after, until they answer) queue-mode calls go by name past them.
SILENCE_HOLDS = 1.0
#: Seconds a probe waits for more answers after the last one.
_PROBE_STALL = 0.05


class Target(NamedTuple):
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
    queue_target: Target = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queue_target", Target(self.subject, None, None))

    @property
    def conventional(self) -> bool:
        return self.discovered_at is None


class Targets:
    """Chooses the target of each try for one Mesh client."""

    def __init__(self, subjects: Subjects, rng: random.Random, silence: Silence) -> None:
        self._subjects = subjects
        self._rng = rng
        self._tiers = TierCache()
        self.silence = silence
        self.zone = ""  # the caller's zone: its NATS cluster's name, or as configured

    def choose(
        self,
        route: Route,
        traffic: ServiceTraffic,
        registry: RegistryTable | None,
        subset: str | None,
        *,
        exclude: Collection[str] = (),
        by_name: bool = False,
        key: str | None = None,
    ) -> Target:
        """The target of one try in ``subset`` (None: the whole service)."""
        policy = traffic.policy
        if registry is None or not route.conventional:
            if subset is None:
                return route.queue_target
            return Target(
                self._subjects.subset(route.service, subset, route.endpoint), None, subset
            )
        if policy.load_balancer == "queue" and not (by_name or exclude):
            silent = self.silence.known(route.service)
            if not silent:
                if subset is None:
                    return route.queue_target
                queue = self._subjects.subset(route.service, subset, route.endpoint)
                return Target(queue, None, subset)
            exclude = silent
        elif policy.load_balancer == "queue":
            silent = self.silence.known(route.service)
            if silent:
                exclude = {*exclude, *silent}
        return self._named(route, policy, traffic, registry, subset, exclude, key)

    def _named(
        self,
        route: Route,
        policy: ServicePolicy,
        traffic: ServiceTraffic,
        registry: RegistryTable,
        subset: str | None,
        exclude: Collection[str],
        key: str | None,
    ) -> Target:
        now = time.monotonic()
        outliers = traffic.outliers
        # Own zone first, then the route's zone order, then any: see _zones.
        chosen = pick(
            self._tiers.get(registry, subset, route.endpoint, self.zone, policy.zones),
            exclude=exclude,
            ejected=lambda instance: outliers.ejected(instance, now),
            load=traffic.load,
            rng=self._rng,
            key=key if policy.load_balancer == "hash" else None,
            gone=traffic.gone_now(now),
        )
        if chosen.instance is None:
            # Every known instance was tried: perhaps new ones the registry does not
            # show yet serve the queue group.
            if subset is None:
                return route.queue_target
            return Target(
                self._subjects.subset(route.service, subset, route.endpoint), None, subset
            )
        if chosen.tier:
            traffic.counters.zone_failovers += 1
        subject = self._subjects.instance(route.service, chosen.instance, route.endpoint)
        return Target(subject, chosen.instance, subset)


@dataclass(slots=True)
class _Heard:
    until: float
    silent: frozenset[str]
    asking: anyio.Event | None = None


class Silence:
    """Which instances of a service do not answer ``$SRV.PING`` now (frozen, say).

    A timeout through a queue group names no instance; before its retry goes by
    name, the caller asks every instance of the service, once per service at a
    time. Calls go by name past the silent ones; while any is silent, the first
    call after :data:`SILENCE_HOLDS` seconds asks again (so a thawed instance is
    back within that), instead of sending into the queue group to find out.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._heard: dict[str, _Heard] = {}

    def known(self, service: str) -> frozenset[str]:
        """The instances last heard to be silent (no I/O): kept until a probe hears them."""
        heard = self._heard.get(service)
        return frozenset() if heard is None else heard.silent

    def due(self, service: str) -> bool:
        """Whether instances were silent and that answer has aged: ask again."""
        heard = self._heard.get(service)
        return (
            heard is not None
            and bool(heard.silent)
            and heard.asking is None
            and time.monotonic() >= heard.until
        )

    async def probe(self, service: str, registry: RegistryTable, wait: float) -> frozenset[str]:
        """The instances of ``registry`` that do not answer a ping within ``wait`` seconds."""
        heard = self._heard.get(service)
        now = time.monotonic()
        if heard is not None:
            if heard.asking is not None:
                with anyio.move_on_after(wait):
                    await heard.asking.wait()  # another call is asking: share its answer
                return heard.silent
            if now < heard.until:
                return heard.silent
        asking = anyio.Event()
        entry = _Heard(now, heard.silent if heard else frozenset(), asking)
        self._heard[service] = entry
        try:
            answers = await _discovery.gather(
                self._link, "PING", _micro.Ping, name=service, timeout=wait, stall=_PROBE_STALL
            )
            heard_ids = {a.id for a in answers}
            entry.silent = frozenset(
                i.id for i in registry.instances if i.mesh and i.id not in heard_ids
            )
            if entry.silent:
                log.info(
                    "%s: no answer to a ping from %s", service, ", ".join(sorted(entry.silent))
                )
        finally:
            entry.until = time.monotonic() + SILENCE_HOLDS
            entry.asking = None
            asking.set()
        return entry.silent
