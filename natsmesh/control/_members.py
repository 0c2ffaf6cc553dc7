"""Who runs: the registry fed by instances' own messages, and ``$SRV`` discovery.

Trust follows the subject, never the body. Under an access policy only a
service's own identity may publish ``<prefix>._ctl.{announce,heartbeat,leave}.<svc>``
and answer ``$SRV.*.<svc>.*``, so:

- a natsmesh instance enters the registry only by announcing on its own
  service's subject (or, for an instance that announced before this controller
  started, by answering ``$SRV.INFO.<svc>.<id>``, its own subject, with a
  matching name and id);
- a bare ``$SRV.INFO`` scan, which any identity may answer with any name, never
  adds a natsmesh instance; it only finds *foreign* micro services (other
  languages), which are kept apart: never merged into a service that has
  natsmesh instances, and, when the controller knows the policy, admitted only
  if the policy names them (and then looked up on their own ``$SRV`` subject).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

import pydantic

from natsmesh.client import _discovery
from natsmesh.control._registry import Registry
from natsmesh.transport._link import Link
from natsmesh.transport._transport import Msg
from natsmesh.wire import _control, _micro
from natsmesh.wire._control import (
    Announcement,
    EndpointEntry,
    Heartbeat,
    Leave,
    OutlierReport,
    StatusReport,
    subject_service,
)
from natsmesh.wire._subjects import default_subset

log = logging.getLogger("natsmesh.controller")

_MAX_FETCHING = 64


class Rejections:
    """Logs why a message was dropped, once per subject and reason (bounded)."""

    def __init__(self) -> None:
        self._logged: set[str] = set()

    def __call__(self, subject: str, reason: str) -> None:
        key = f"{subject}: {reason}"
        if key not in self._logged and len(self._logged) < 1000:
            self._logged.add(key)
            log.warning("rejected a message on %s", key)


def parse(model: type[_control._Wire], msg: Msg, reject: Rejections) -> Any:
    """``msg`` as ``model``, or None (logged) when too large, invalid, or speaking for
    another service than its subject names."""
    if len(msg.data) > _control.MAX_CONTROL_MESSAGE:
        reject(msg.subject, "message too large")
        return None
    try:
        message = model.model_validate_json(msg.data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        reject(msg.subject, f"{where}: {first['msg']}")
        return None
    if isinstance(message, Announcement | Heartbeat | Leave):
        claimed = subject_service(msg.subject)
    elif isinstance(message, OutlierReport):
        claimed = msg.subject.split(".")[-2]
    else:
        return message
    if message.service != claimed:
        # Permissions bind a service's identity to its subjects, not to the body.
        reject(msg.subject, f"speaks for another service ({message.service})")
        return None
    return message


class Members:
    """The registry's inputs; every change marks the service ``dirty`` for a rewrite."""

    def __init__(
        self, link: Link, registry: Registry, *, admitted: Collection[str] | None = None
    ) -> None:
        self._link = link
        self.registry = registry
        # None: no policy known (dev mode), every foreign service found is admitted.
        self.admitted = None if admitted is None else frozenset(admitted)
        self.dirty: set[str] = set()
        self.reject = Rejections()
        self._fetching: set[tuple[str, str]] = set()

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    async def on_announce(self, msg: Msg) -> None:
        announcement = parse(Announcement, msg, self.reject)
        if announcement is not None:
            self.dirty |= self.registry.announce(announcement, time.monotonic())

    def on_heartbeat(self, msg: Msg) -> tuple[str, str] | None:
        """Keep the instance; returns (service, id) of a live one to look up, if unknown."""
        beat = parse(Heartbeat, msg, self.reject)
        if beat is None:
            return None
        changed, unknown = self.registry.heartbeat(beat, time.monotonic())
        self.dirty |= changed
        wanted = (beat.service, beat.id)
        if not unknown or wanted in self._fetching or len(self._fetching) >= _MAX_FETCHING:
            return None
        self._fetching.add(wanted)
        return wanted

    async def fetch(self, service: str, instance_id: str) -> None:
        """Ask an instance that announced before we started, on its own ``$SRV`` subject."""
        try:
            infos = await _discovery.gather(
                self._link, "INFO", _micro.Info, name=service, instance_id=instance_id, timeout=1.0
            )
            for info in infos:
                if info.name == service and info.id == instance_id and info.is_mesh:
                    self.dirty |= self.registry.announce(from_info(info), time.monotonic())
        finally:
            self._fetching.discard((service, instance_id))

    async def on_leave(self, msg: Msg) -> None:
        leave = parse(Leave, msg, self.reject)
        if leave is not None:
            self.dirty |= self.registry.leave(leave)

    def expire(self) -> None:
        self.dirty |= self.registry.expire(time.monotonic())

    async def scan(self, *, timeout: float) -> None:
        """Find foreign micro services (``$SRV.INFO``) and keep them apart."""
        if self.admitted is not None:
            # Only the named identity may answer on $SRV.INFO.<name>: ask each by name.
            await self.lookup(sorted(self.admitted), timeout=timeout)
            return
        infos = await _discovery.gather(self._link, "INFO", _micro.Info, timeout=timeout)
        self._take(infos, mesh=False)

    async def lookup(self, names: Collection[str], *, timeout: float) -> None:
        """Ask each named service on its own ``$SRV.INFO.<name>`` subject (at most 64):
        natsmesh instances that announced before this controller started, and foreign
        services the policy admits."""
        for name in list(names)[:64]:
            found = await _discovery.gather(
                self._link, "INFO", _micro.Info, name=name, timeout=timeout / 4
            )
            self._take([i for i in found if i.name == name], mesh=True)

    def _take(self, infos: list[_micro.Info], *, mesh: bool) -> None:
        now = time.monotonic()
        for info in infos:
            if info.is_mesh and not mesh:
                continue  # a bare scan's answer: anyone may claim any name there
            if not info.is_mesh and self.admitted is not None and info.name not in self.admitted:
                continue
            try:
                self.dirty |= self.registry.announce(from_info(info), now)
            except (pydantic.ValidationError, ValueError) as exc:
                self.reject(f"$SRV.INFO ({info.name})", str(exc)[:200])


def status_of(msg: Msg, reject: Rejections) -> StatusReport | None:
    """A status report with its sender taken from the subject's last token."""
    report: StatusReport | None = parse(StatusReport, msg, reject)
    if report is None:
        return None
    sender = subject_service(msg.subject)
    client = report.client if report.client == sender else f"{sender}/{report.client}"
    return report.model_copy(update={"client": client[:256]})


def from_info(info: _micro.Info) -> Announcement:
    """The registry's view of an instance seen through ``$SRV.INFO``."""
    subset = info.metadata.get(_micro.SUBSET_KEY) or default_subset(info.version or "0.0.0")
    return Announcement(
        service=info.name,
        id=info.id,
        version=info.version[:64],
        subset=subset,
        endpoints=tuple(
            EndpointEntry(
                name=e.name[:64],
                subject=e.subject[:256],
                idempotent=e.metadata.get("natsmesh.idempotent") == "true",
                request_schema=_schema(e.metadata.get("natsmesh.request_schema", "")),
                response_schema=_schema(e.metadata.get("natsmesh.response_schema", "")),
            )
            for e in info.endpoints[:256]
        ),
        metadata=dict(list(info.metadata.items())[:64]),
        zone=info.metadata.get("natsmesh.zone", ""),
        mesh=info.is_mesh,
    )


def _schema(text: str) -> str:
    # Foreign services may send anything here: keep it only if it fits the table.
    return text if len(text) <= 64 * 1024 else ""
