"""Zone-aware instance choice for p2c and hash: own zone first, then a set order, then any.

A zone is a NATS cluster name (or ``NATSMESH_ZONE``): every instance reports its
own, and the caller knows its own the same way. The instances that may serve a
call are grouped into *tiers* by zone rank: the caller's zone, then the zones the
route lists (``zones = [...]``) in order, then every other zone together. A call
goes to the first tier that still has an instance that is neither ejected nor
already tried by this call; a tier with none left is *exhausted*, and passing
over it is a zone failover.

Pure: tiers are built from a registry snapshot and cached by the snapshot's
identity, so the per-call cost is a dict lookup; time, load and randomness are
passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from natsmesh.traffic._balance import pick_hash, pick_p2c
from natsmesh.wire._control import RegistryTable

Tiers = tuple[tuple[str, ...], ...]


def zone_rank(zone: str, own: str, order: Sequence[str]) -> int:
    """0 for the caller's own zone, 1 + position for a listed zone, else one past the list."""
    if own and zone == own:
        return 0
    try:
        return 1 + order.index(zone)
    except ValueError:
        return 1 + len(order)


def tiers(candidates: Sequence[tuple[str, str]], own: str, order: Sequence[str]) -> Tiers:
    """``(instance, zone)`` pairs grouped by zone rank, best first, empty tiers left out.

    Instances keep their order within a tier, so a hash over a tier is stable.
    """
    ranked: dict[int, list[str]] = {}
    for instance, zone in candidates:
        ranked.setdefault(zone_rank(zone, own, order), []).append(instance)
    return tuple(tuple(ranked[rank]) for rank in sorted(ranked))


@dataclass(frozen=True, slots=True)
class Pick:
    """Where one try goes: an instance (None: use the queue group) and its tier's index."""

    instance: str | None
    tier: int = 0


NONE = Pick(None)


def pick(
    tiered: Tiers,
    *,
    exclude: Collection[str],
    ejected: Callable[[str], bool],
    load: Callable[[str], float],
    rng: random.Random,
    key: str | None = None,
    gone: Collection[str] = (),
) -> Pick:
    """The instance for one try: from the first tier with one neither excluded nor ejected.

    Within the tier, ``key`` (hash mode) picks by rendezvous hashing over the whole
    tier, so a key stays on its instance while the tier's membership holds; if that
    instance is excluded or ejected, p2c over the tier's usable ones. When every tier
    is exhausted: an instance not yet tried even if ejected (better than none), and
    None when all were tried (new instances the registry does not show yet may serve
    the queue group). Instances in ``gone`` (proven gone) are never chosen.
    """
    for index, tier in enumerate(tiered):
        usable = [i for i in tier if i not in exclude and i not in gone and not ejected(i)]
        if usable:
            return Pick(_choose(tier, usable, load, rng, key), index)
    for index, tier in enumerate(tiered):
        fresh = [i for i in tier if i not in exclude and i not in gone]
        if fresh:
            return Pick(_choose(tier, fresh, load, rng, key), index)
    return NONE


def _choose(
    tier: Sequence[str],
    usable: Sequence[str],
    load: Callable[[str], float],
    rng: random.Random,
    key: str | None,
) -> str:
    if key is not None:
        chosen = pick_hash(sorted(tier), key)
        if chosen in usable:
            return chosen
    return pick_p2c(usable, load, rng)


class TierCache:
    """Tiers per service, subset and endpoint, rebuilt only when a registry snapshot changes.

    A registry is an immutable snapshot replaced on every change (as grpc's pickers
    are), and so is a policy's zone list: identity tells whether cached tiers hold.
    """

    def __init__(self) -> None:
        self._services: dict[str, _Cached] = {}

    def get(
        self,
        registry: RegistryTable,
        subset: str | None,
        endpoint: str,
        own: str,
        order: Sequence[str],
    ) -> Tiers:
        cached = self._services.get(registry.service)
        if (
            cached is None
            or cached.registry is not registry
            or cached.order is not order
            or cached.own != own
        ):
            cached = self._services[registry.service] = _Cached(registry, order, own, {})
        found = cached.tiers.get((subset, endpoint))
        if found is None:
            candidates = [
                (i.id, i.zone)
                for i in registry.instances
                if i.mesh
                and i.healthy
                and (subset is None or i.subset == subset)
                and any(e.name == endpoint for e in i.endpoints)
            ]
            found = tiers(candidates, own, order)
            if len(cached.tiers) < 1024:  # bounded: one service's endpoints x subsets
                cached.tiers[(subset, endpoint)] = found
        return found


@dataclass(slots=True)
class _Cached:
    registry: RegistryTable
    order: Sequence[str]
    own: str
    tiers: dict[tuple[str | None, str], Tiers]
