"""The checks of a route config that span fields, over plain data (pure, no I/O).

pydantic runs a model's own checks only once every field has validated, so a
config with one bad field would hide its weight-sum, failover and conflict
problems until that field is fixed. These functions read the data as decoded
from the file (or a model's dump), skip what is malformed (pydantic reports
that), and are run by the models in both cases: every problem in one answer.

Each returns ``(path relative to the model, reason)`` pairs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from natsmesh.wire._config import Loc
from natsmesh.wire._errors import InvalidName
from natsmesh.wire._subjects import validate_name

__all__ = [
    "config_checks",
    "fault_checks",
    "hedging_checks",
    "policy_checks",
    "retries_checks",
]

_PARAM_SEGMENT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
Problems = list[tuple[Loc, str]]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _given(data: Mapping[str, Any], name: str) -> bool:
    return data.get(name) is not None


def retries_checks(data: Mapping[str, Any]) -> Problems:
    backoff = _number(data.get("backoff", 0.02))
    cap = _number(data.get("max_backoff", 0.5))
    if backoff is not None and cap is not None and cap < backoff:
        return [(("max_backoff",), "must not be less than backoff")]
    return []


def hedging_checks(data: Mapping[str, Any]) -> Problems:
    if _given(data, "delay") == _given(data, "percentile"):
        return [((), "give exactly one of delay and percentile")]
    return []


def fault_checks(data: Mapping[str, Any]) -> Problems:
    problems: Problems = []
    for value, percent in (("delay", "delay_percent"), ("abort_code", "abort_percent")):
        if _given(data, value) and not _given(data, percent):
            problems.append(((percent,), f"required with {value}"))
        elif _given(data, percent) and not _given(data, value):
            problems.append(((value,), f"required with {percent}"))
    if not _given(data, "delay") and not _given(data, "abort_code") and not problems:
        problems.append(((), "injects nothing: give delay or abort_code"))
    return problems


def policy_checks(data: Mapping[str, Any]) -> Problems:
    """A service policy's balancer, zones, subsets, matches, failover and mirror."""
    balancer = data.get("load_balancer", "p2c")
    problems = _balancer(balancer, data.get("hash_header"))
    problems += _zones(balancer, data.get("zones"))
    problems += _subsets(data)
    failover = data.get("failover")
    if isinstance(failover, Mapping):
        problems += _cycles({k: v for k, v in failover.items() if isinstance(v, str)})
    return problems


def _balancer(balancer: object, hash_header: object) -> Problems:
    if balancer == "hash" and hash_header is None:
        return [(("hash_header",), "required when load_balancer is 'hash'")]
    if balancer in ("queue", "p2c") and hash_header is not None:
        return [(("hash_header",), "only used when load_balancer is 'hash'")]
    return []


def _zones(balancer: object, zones: object) -> Problems:
    if not isinstance(zones, list):
        return []
    problems: Problems = []
    if zones and balancer == "queue":
        # NATS itself prefers queue subscribers in the local cluster of a supercluster.
        why = "only used when load_balancer is 'p2c' or 'hash'"
        problems.append((("zones",), why + " (queue groups prefer the local cluster)"))
    first: dict[str, int] = {}
    for i, zone in enumerate(zones):
        if not isinstance(zone, str):
            continue
        if zone in first:
            problems.append((("zones", i), f"duplicate zone {zone!r} (also zones[{first[zone]}])"))
        first.setdefault(zone, i)
    return problems


def _subsets(data: Mapping[str, Any]) -> Problems:
    problems: Problems = []
    subsets = data.get("subsets")
    subsets = subsets if isinstance(subsets, list) else []
    first: dict[str, int] = {}
    weights: list[int] = []
    for i, subset in enumerate(subsets):
        if not isinstance(subset, Mapping):
            continue
        name, weight = subset.get("name"), subset.get("weight")
        if type(weight) is int and 0 <= weight <= 100:
            weights.append(weight)
        if not isinstance(name, str):
            continue
        if name in first:
            why = f"duplicate subset {name!r} (also subsets[{first[name]}])"
            problems.append((("subsets", i, "name"), why))
        first.setdefault(name, i)
    # Only a sum of weights that all validated says anything.
    if subsets and len(weights) == len(subsets) and sum(weights) != 100:
        problems.append((("subsets",), f"weights sum to {sum(weights)}, not 100"))

    def undeclared(loc: Loc, name: object, what: str = "subset") -> None:
        # A name that is no valid subset name is reported as that, once, by pydantic.
        if _is_name(name) and name not in first:
            problems.append((loc, f"{what} {name!r} is not declared in subsets"))

    matches = data.get("matches")
    for i, match in enumerate(matches if isinstance(matches, list) else []):
        if isinstance(match, Mapping):
            undeclared(("matches", i, "subset"), match.get("subset"))
    failover = data.get("failover")
    for source, target in (failover if isinstance(failover, Mapping) else {}).items():
        undeclared(("failover", source), source)
        if target != source:  # a self-loop is reported once, as a cycle
            undeclared(("failover", source), target, "failover target")
    mirror = data.get("mirror")
    if isinstance(mirror, Mapping):
        undeclared(("mirror", "subset"), mirror.get("subset"))
    return problems


def _is_name(value: object) -> bool:
    try:
        validate_name("subset", value)
    except InvalidName:
        return False
    return True


def _cycles(failover: Mapping[str, str]) -> Problems:
    """A problem per failover cycle (each subset has one next, so cycles cannot share nodes)."""
    problems: Problems = []
    done: set[str] = set()
    for start in sorted(failover):
        chain: list[str] = []
        node: str | None = start
        while node is not None and node not in done and node not in chain:
            chain.append(node)
            node = failover.get(node)
        if node is not None and node in chain:
            cycle = [*chain[chain.index(node) :], node]
            problems.append((("failover",), f"cycle {' -> '.join(cycle)}"))
        done.update(chain)
    return problems


def config_checks(data: Mapping[str, Any]) -> Problems:
    """A whole config's HTTP routes: no two of the same method and path shape."""
    problems: Problems = []
    seen: dict[str, int] = {}
    http = data.get("http")
    for i, route in enumerate(http if isinstance(http, list) else []):
        if not isinstance(route, Mapping):
            continue
        method, path = route.get("method"), route.get("path")
        if not isinstance(method, str) or not isinstance(path, str):
            continue
        # Parameter names do not matter to matching: /a/{id} and /a/{key} conflict.
        shape = f"{method} {_PARAM_SEGMENT.sub('{}', path)}"
        if shape in seen:
            problems.append((("http", i), f"{method} {path} conflicts with http[{seen[shape]}]"))
        seen.setdefault(shape, i)
    return problems
