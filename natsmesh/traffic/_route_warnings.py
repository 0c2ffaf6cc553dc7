"""What a valid route config names that nothing serves right now (pure, no I/O).

The controller checks a config against its registry before applying it: a service
with no live instance, a subset no live instance belongs to, and an HTTP route
whose target service or endpoint nobody serves are *warnings*. Calls they route
would fail (no responders), so ``routes apply`` refuses them unless told that an
empty target is meant (``--allow-empty``: a subset about to be deployed, say).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from natsmesh.traffic._routes import RouteConfig, ServicePolicy
from natsmesh.wire._config import Problem, loc_path
from natsmesh.wire._control import Announcement

__all__ = ["Live", "empty_targets"]


@dataclass(frozen=True, slots=True)
class Live:
    """What the live instances of one service serve: their subsets and endpoints."""

    subsets: frozenset[str]
    endpoints: frozenset[str]

    @classmethod
    def of(cls, instances: Iterable[Announcement]) -> Live:
        found = list(instances)
        return cls(
            subsets=frozenset(i.subset for i in found),
            endpoints=frozenset(e.name for i in found for e in i.endpoints),
        )


def empty_targets(config: RouteConfig, live: Mapping[str, Live]) -> list[Problem]:
    """Every service, subset and HTTP target of ``config`` that no live instance serves.

    ``live`` has an entry for each service with at least one live instance.
    """
    problems: list[Problem] = []
    for name, policy in config.services.items():
        serving = live.get(name)
        if serving is None:
            problems.append(Problem(loc_path(("services", name)), f"no live instance of {name!r}"))
            continue
        for loc, subset in _subsets(policy):
            if subset not in serving.subsets:
                why = f"no live instance of {name!r} serves subset {subset!r}"
                problems.append(Problem(loc_path(("services", name, *loc)), why))
    for i, route in enumerate(config.http):
        service, _, endpoint = route.target.partition(".")
        serving = live.get(service)
        if serving is None:
            why = f"no live instance of service {service!r}"
        elif endpoint not in serving.endpoints:
            why = f"no live instance of {service!r} has an endpoint {endpoint!r}"
        else:
            continue
        problems.append(Problem(loc_path(("http", i, "target")), why))
    return problems


def _subsets(policy: ServicePolicy) -> list[tuple[tuple[str | int, ...], str]]:
    """Every subset ``policy`` sends calls to, at the first place it names it."""
    named: list[tuple[tuple[str | int, ...], str]] = []
    seen: set[str] = set()

    def add(loc: tuple[str | int, ...], subset: str) -> None:
        if subset not in seen:
            seen.add(subset)
            named.append((loc, subset))

    for i, subset in enumerate(policy.subsets):
        add(("subsets", i, "name"), subset.name)
    for i, match in enumerate(policy.matches):
        add(("matches", i, "subset"), match.subset)
    for source, target in policy.failover.items():
        add(("failover", source), target)
    if policy.mirror is not None:
        add(("mirror", "subset"), policy.mirror.subset)
    return named
