"""The services the gateway can reach, found through ``$SRV`` discovery.

``POST /{service}/{endpoint}`` is open to any running service, natsmesh or a
NATS micro service in another language, but only to those: a name nobody
answers for is a 404 before anything is sent on a service subject, so random
paths cannot make the Mesh client load tables, watch keys or keep state for
services that do not exist. A service seen once stays known (bounded), so a
known service that is down answers 503 "no responders", at once.

Lookups on the request path are dictionary reads. A miss asks ``$SRV.INFO.<name>``
(one request per name at a time; a known service is asked again at most once
per ``miss_interval``). The endpoint schemas kept here feed the OpenAPI document
and the typing of path and query parameters.

Requests asking for the same name, or scanning at the same time, share one
lookup and wait for it on an event: a request that gives up leaves the lookup
to the others. Entered (``async with``, as the gateway's lifespan does), the
directory runs lookups in its own task group; without that owner (an app run
without a lifespan) the first asker runs it, shielded and bounded by ``timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus

from gateway import _schemas
from gateway._paths import is_token
from natsmesh import Mesh

log = logging.getLogger("natsmesh.gateway")

MAX_SERVICES: Final = 10_000
MAX_ENDPOINTS: Final = 256


class _EndpointInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def metadata(self) -> dict[str, str]: ...


class _Info(Protocol):
    """The parts of a ``$SRV.INFO`` answer (as ``Mesh.services()`` returns it) read here."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def is_mesh(self) -> bool: ...
    @property
    def endpoints(self) -> Sequence[_EndpointInfo]: ...


@dataclass(frozen=True, slots=True)
class EndpointDoc:
    name: str
    request: _schemas.Schema | None = None
    response: _schemas.Schema | None = None
    properties: Mapping[str, _schemas.Schema] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True, slots=True)
class ServiceDoc:
    name: str
    version: str
    description: str
    mesh: bool
    endpoints: Mapping[str, EndpointDoc]


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.lstrip("vV").split(".")[:4]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits[:9]) if digits else 0)
    return tuple(parts)


def service_doc(infos: Sequence[_Info]) -> ServiceDoc | None:
    """One service's endpoints from its instances' INFO; the newest version's schemas win."""
    if not infos:
        return None
    ordered = sorted(infos, key=lambda i: _version_key(i.version))
    newest = ordered[-1]
    endpoints: dict[str, EndpointDoc] = {}
    for info in ordered:
        for ep in info.endpoints[:MAX_ENDPOINTS]:
            if not is_token(ep.name):
                continue  # never reachable through a path segment anyway
            request = _schemas.read_schema(ep.metadata, _schemas.REQUEST_KEY)
            endpoints[ep.name] = EndpointDoc(
                ep.name,
                request,
                _schemas.read_schema(ep.metadata, _schemas.RESPONSE_KEY),
                _schemas.properties(request),
                ep.metadata.get("description", "")[:1000],
            )
    return ServiceDoc(
        newest.name,
        newest.version,
        newest.description,
        newest.is_mesh,
        dict(sorted(endpoints.items())),
    )


class Directory:
    """Known services and their endpoints; fed by ``$SRV.INFO``, read without waiting."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        miss_interval: float = 1.0,
        scan_ttl: float = 5.0,
        timeout: float = 1.0,
    ) -> None:
        self._mesh = mesh
        self._services: dict[str, ServiceDoc] = {}
        self._asked: dict[str, float] = {}  # service -> when it was last asked for
        self._pending: dict[str, anyio.Event] = {}  # service -> set when its lookup is over
        self._scanning: anyio.Event | None = None  # set when the scan in flight is over
        self._scanned_at = -1e9
        self._tg: TaskGroup | None = None
        self._stack = AsyncExitStack()
        self.miss_interval = miss_interval
        self.scan_ttl = scan_ttl
        self.timeout = timeout

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError("this Directory is entered already")
        self._stack = AsyncExitStack()
        self._tg = await self._stack.enter_async_context(_background())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Stops the lookups in flight; each sets its event on the way out, so no
        # request is left waiting.
        self._tg = None
        await self._stack.aclose()

    def warm(self) -> None:
        """Start a scan in the background, if entered (requests do not wait for it)."""
        if self._tg is not None and self._scanning is None:
            self._scanning = anyio.Event()
            self._tg.start_soon(self._scan_all, self._scanning)

    @property
    def scanned(self) -> bool:
        """Whether one full scan has completed."""
        return self._scanned_at > 0

    def get(self, service: str, endpoint: str) -> EndpointDoc | None:
        """The endpoint if it is known, without asking anyone."""
        known = self._services.get(service)
        return None if known is None else known.endpoints.get(endpoint)

    async def find(self, service: str, endpoint: str) -> EndpointDoc | None:
        """The endpoint, asking ``$SRV.INFO.<service>`` on a miss (rate-limited per service)."""
        found = self.get(service, endpoint)
        if found is not None:
            return found
        now = time.monotonic()
        if service in self._services and now - self._asked.get(service, 0.0) < self.miss_interval:
            return None
        doc = await self._ask(service)
        return None if doc is None else doc.endpoints.get(endpoint)

    async def _ask(self, service: str) -> ServiceDoc | None:
        done = self._pending.get(service)
        if done is None:
            done = self._pending[service] = anyio.Event()
            await self._run(self._lookup, service, done)
        await done.wait()
        return self._services.get(service)

    async def _run(self, lookup: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        """Run ``lookup`` in the directory's group; without one, here, shielded.

        Shielded so that this request being cancelled does not fail the others
        waiting for the same lookup; ``timeout`` bounds it.
        """
        if self._tg is not None:
            self._tg.start_soon(lookup, *args)
        else:
            with anyio.CancelScope(shield=True):
                await lookup(*args)

    async def _lookup(self, service: str, done: anyio.Event) -> None:
        self._asked[service] = time.monotonic()
        try:
            infos = await self._mesh.services(service, timeout=self.timeout)
        except Exception as exc:  # a reconnecting connection: the next miss asks again
            log.info("INFO of %s: %s", service, exc)
            return
        else:
            doc = service_doc(infos)
            if doc is not None:
                self._remember(doc)
        finally:
            self._pending.pop(service, None)
            done.set()

    def _remember(self, doc: ServiceDoc) -> None:
        if doc.name not in self._services and len(self._services) >= MAX_SERVICES:
            oldest = min(self._asked, key=self._asked.__getitem__, default=None)
            if oldest is not None:
                self._services.pop(oldest, None)
                self._asked.pop(oldest, None)
        self._services[doc.name] = doc
        self._asked.setdefault(doc.name, time.monotonic())

    async def scan(self) -> dict[str, ServiceDoc]:
        """Every running service (one ``$SRV.INFO`` scatter-gather per ``scan_ttl``)."""
        if time.monotonic() - self._scanned_at < self.scan_ttl and self._scanning is None:
            return dict(self._services)
        done = self._scanning
        if done is None:
            done = self._scanning = anyio.Event()
            await self._run(self._scan_all, done)
        await done.wait()
        return dict(self._services)

    async def _scan_all(self, done: anyio.Event) -> None:
        try:
            infos = await self._mesh.services(timeout=self.timeout)
        except Exception as exc:
            log.info("INFO scan: %s", exc)
            return
        else:
            self._learn(infos)
        finally:
            self._scanning = None
            done.set()

    def _learn(self, infos: Sequence[Any]) -> None:
        by_name: dict[str, list[Any]] = {}
        for info in infos:
            if is_token(info.name):
                by_name.setdefault(info.name, []).append(info)
        now = time.monotonic()
        for infos_of in by_name.values():
            doc = service_doc(infos_of)
            if doc is not None:
                self._remember(doc)
                self._asked[doc.name] = now
        self._scanned_at = now


@asynccontextmanager
async def _background() -> AsyncIterator[TaskGroup]:
    """A task group whose tasks stop, on the way out, through a scope of their own.

    They run under a helper task, never under the task that enters: stopping them
    cannot cancel that task's code. (natsmesh's ``_tasks.background``, which the
    gateway may not import.) Its tasks must not raise: each logs instead.
    """
    async with anyio.create_task_group() as outer:
        inner, scope = await outer.start(_host)
        try:
            yield inner
        finally:
            scope.cancel()


async def _host(*, task_status: TaskStatus[tuple[TaskGroup, anyio.CancelScope]]) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:
            task_status.started((tasks, scope))
            await anyio.sleep_forever()
