"""The leader's handling of queue-mode outlier reports: sender from the subject, quorum
and cap in :class:`~natsmesh.control._ejector.Ejector`, the command to the instance.
"""

from __future__ import annotations

import logging
import time

import pydantic

from natsmesh.control._ejector import Ejector
from natsmesh.control._members import Members, parse
from natsmesh.control._store import Store
from natsmesh.traffic._routes import Outlier, ServicePolicy
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Msg
from natsmesh.wire._control import OutlierReport, RouteTable, eject_subject, routes_key

log = logging.getLogger("natsmesh.controller")


class Ejection:
    """Outlier reports in, eject commands out (the leader alone acts on them)."""

    def __init__(self, link: Link, members: Members, store: Store, *, prefix: str) -> None:
        self._link = link
        self._members = members
        self._store = store
        self._prefix = prefix
        self.ejector = Ejector()

    async def on_report(self, msg: Msg, *, leader: bool) -> None:
        report = parse(OutlierReport, msg, self._members.reject)
        if report is None:
            return
        if not leader:
            self.ejector.counters.ignored += 1  # the leader alone decides, so none twice
            return
        # The reporter is the identity the subject names (only it may publish there).
        report = report.model_copy(update={"caller": msg.subject.rpartition(".")[2]})
        registry = self._members.registry
        population = [m.id for m in registry.instances(report.service) if m.mesh]
        self.ejector.forget(report.service, population)
        command = self.ejector.report(
            report, time.monotonic(), population=population, policy=self._policy(report.service)
        )
        if command is None:
            return
        log.warning(
            "%s/%s: reported by callers, out of its queue groups for %.1f s",
            command.service,
            command.id,
            command.seconds,
        )
        self._members.dirty |= registry.mark_unhealthy(command.service, command.id)
        subject = eject_subject(self._prefix, command.service, command.id)
        await self._link.publish(subject, command.model_dump_json().encode())

    def _policy(self, service: str) -> Outlier:
        value = self._store.value(routes_key(service))
        if value is None:
            return Outlier()
        try:
            table = RouteTable.model_validate_json(value)
            return ServicePolicy.model_validate(table.policy).outlier
        except pydantic.ValidationError as exc:
            log.warning("route table of %s unreadable, default outlier policy: %s", service, exc)
            return Outlier()
