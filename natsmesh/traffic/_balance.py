"""Where a call goes: a subset by header match or weight, an instance by p2c or hash.

Pure: callers pass headers, candidate lists, load figures, time and randomness.
A failover chain follows ``failover`` from the chosen subset, without cycles.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from natsmesh.traffic._routes import HeaderMatch, Subset


def choose_subset(
    subsets: Sequence[Subset],
    matches: Sequence[HeaderMatch],
    headers: Mapping[str, str],
    rand: float,
) -> str | None:
    """The subset for one call: the first header match wins, else a weighted draw.

    ``rand`` is uniform in [0, 1). None when the policy names no subsets.
    """
    if matches and headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        for match in matches:
            if all(lowered.get(k) == v for k, v in match.headers.items()):
                return match.subset
    if not subsets:
        return None
    point, total = rand * 100, 0
    for subset in subsets:
        total += subset.weight
        if point < total:
            return subset.name
    return next((s.name for s in reversed(subsets) if s.weight), subsets[-1].name)


def failover_chain(first: str | None, failover: Mapping[str, str]) -> list[str | None]:
    """``first``, then each next subset ``failover`` names, stopping before a repeat."""
    chain: list[str | None] = [first]
    current = first
    while current is not None and current in failover and failover[current] not in chain:
        current = failover[current]
        chain.append(current)
    return chain


@dataclass(slots=True)
class PeakEwma:
    """Latency estimate of one instance, as Finagle and Linkerd keep it.

    A slower sample than the estimate replaces it at once (the peak); faster
    samples pull it down with a time constant ``tau``. The load of an instance
    is the estimate times its requests in flight plus one.
    """

    tau: float = 10.0
    estimate: float = 0.0
    outstanding: int = 0
    stamp: float = 0.0

    def observe(self, seconds: float, now: float) -> None:
        if seconds > self.estimate:
            self.estimate = seconds
        else:
            weight = math.exp(-max(0.0, now - self.stamp) / self.tau)
            self.estimate = self.estimate * weight + seconds * (1 - weight)
        self.stamp = now

    def load(self, now: float) -> float:
        # The estimate fades while nothing is observed, as Finagle's does: an instance
        # once slow is tried again in time. One never measured ranks as the fastest.
        fade = math.exp(-max(0.0, now - self.stamp) / self.tau)
        return self.estimate * fade * (self.outstanding + 1)


def pick_p2c(candidates: Sequence[str], load: Callable[[str], float], rng: random.Random) -> str:
    """Power of two choices: the less loaded of two distinct random candidates."""
    if not candidates:
        raise ValueError("no candidates")
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    first, second = candidates[a], candidates[b]
    return first if load(first) <= load(second) else second


def pick_hash(candidates: Sequence[str], key: str) -> str:
    """Rendezvous hashing: the candidate with the highest score for ``key``.

    When a candidate leaves, only its keys move; when one joins, it takes only
    the keys it now scores highest for.
    """
    if not candidates:
        raise ValueError("no candidates")
    return max(candidates, key=lambda c: _score(key, c))


def _score(key: str, candidate: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
