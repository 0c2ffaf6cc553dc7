"""The controller's view of which instances run: pure state, ``now`` passed in.

Announcements add or replace an instance, heartbeats keep it, a leave or a
missed deadline removes it. Instances of one service, subset and endpoint that
publish different schemas are a *conflict* (:func:`schema_conflicts`): callers
validating against one fail on the other, one call in N.

Every operation returns the services whose table changed, so the controller
rewrites only those keys; a heartbeat that changes nothing costs no write at
all, which is what lets thousands of instances heartbeat without the KV bucket
seeing them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from natsmesh.wire._control import Announcement, Heartbeat, Leave, RegistryTable, SchemaConflict


@dataclass(slots=True)
class _Member:
    announcement: Announcement
    last_seen: float


class Registry:
    """Instances by service and id; an instance unseen for ``expiry`` seconds leaves."""

    def __init__(self, *, expiry: float, foreign_expiry: float | None = None) -> None:
        if expiry <= 0:
            raise ValueError("expiry must be positive")
        self.expiry = expiry
        # Micro services outside natsmesh do not heartbeat: only discovery scans see them.
        self.foreign_expiry = foreign_expiry or expiry
        self._services: dict[str, dict[str, _Member]] = {}

    def announce(self, announcement: Announcement, now: float) -> set[str]:
        """Add or replace an instance. A foreign one (``mesh=False``) never joins a
        service that has natsmesh instances; a natsmesh one displaces foreign ones."""
        members = self._services.setdefault(announcement.service, {})
        if announcement.mesh:
            foreign = [i for i, m in members.items() if not m.announcement.mesh]
            for instance_id in foreign:
                del members[instance_id]
            if foreign:
                members[announcement.id] = _Member(announcement, now)
                return {announcement.service}
        elif any(m.announcement.mesh for m in members.values()):
            return set()
        old = members.get(announcement.id)
        members[announcement.id] = _Member(announcement, now)
        if old is not None and old.announcement == announcement:
            return set()
        return {announcement.service}

    def heartbeat(self, beat: Heartbeat, now: float) -> tuple[set[str], bool]:
        """Keep an instance; returns (changed services, whether the instance is unknown)."""
        member = self._services.get(beat.service, {}).get(beat.id)
        if member is None:
            return set(), True
        member.last_seen = now
        if member.announcement.healthy == beat.healthy:
            return set(), False
        member.announcement = member.announcement.model_copy(update={"healthy": beat.healthy})
        return {beat.service}, False

    def leave(self, leave: Leave) -> set[str]:
        members = self._services.get(leave.service, {})
        if members.pop(leave.id, None) is None:
            return set()
        return {leave.service}

    def expire(self, now: float) -> set[str]:
        changed = set()
        for service, members in self._services.items():
            gone = [i for i, m in members.items() if now - m.last_seen > self._expiry(m)]
            for instance_id in gone:
                del members[instance_id]
            if gone:
                changed.add(service)
        return changed

    def _expiry(self, member: _Member) -> float:
        return self.expiry if member.announcement.mesh else self.foreign_expiry

    def seed(self, table: RegistryTable, now: float) -> None:
        """Start from a stored table (a new leader): its instances get one expiry to prove alive."""
        members = self._services.setdefault(table.service, {})
        for announcement in table.instances:
            members.setdefault(announcement.id, _Member(announcement, now))

    def services(self) -> list[str]:
        return sorted(self._services)

    def instances(self, service: str) -> list[Announcement]:
        return [m.announcement for m in self._services.get(service, {}).values()]

    def mark_unhealthy(self, service: str, instance_id: str) -> set[str]:
        """Record at once what the instance's next heartbeat will say (an ejection)."""
        member = self._services.get(service, {}).get(instance_id)
        if member is None or not member.announcement.healthy:
            return set()
        member.announcement = member.announcement.model_copy(update={"healthy": False})
        return {service}

    def instance_count(self) -> int:
        return sum(len(m) for m in self._services.values())

    def table(self, service: str) -> RegistryTable:
        members = self._services.get(service, {})
        return RegistryTable(
            service=service,
            instances=tuple(members[i].announcement for i in sorted(members)),
        )


def schema_conflicts(instances: Iterable[Announcement]) -> list[SchemaConflict]:
    """Every service, subset, endpoint and part (request, response) whose instances
    publish more than one schema (instances that publish none are left out).
    """
    Part = Literal["request", "response"]
    groups: dict[tuple[str, str, str, Part], dict[str, list[str]]] = {}
    for instance in instances:
        for endpoint in instance.endpoints:
            parts: tuple[tuple[Part, str], ...] = (
                ("request", endpoint.request_schema),
                ("response", endpoint.response_schema),
            )
            for part, text in parts:
                if text:
                    key = (instance.service, instance.subset, endpoint.name, part)
                    variants = groups.setdefault(key, {})
                    variants.setdefault(_canonical(text), []).append(instance.id)
    return [
        SchemaConflict(
            service=service,
            subset=subset,
            endpoint=endpoint,
            part=part,
            instances=tuple(sorted(tuple(sorted(ids)) for ids in variants.values())),
        )
        for (service, subset, endpoint, part), variants in sorted(groups.items())
        if len(variants) > 1
    ]


@functools.lru_cache(maxsize=1024)
def _canonical(text: str) -> str:
    # Key order and spacing are no difference; the same schema text is parsed once.
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):
        return text
