"""``routes.apply`` and ``routes.show``: route files in, route tables out (leader only).

A route file is refused before anything is written when it is larger than
:data:`MAX_ROUTE_FILE`, names more than :data:`MAX_SERVICES` services or has more
than :data:`MAX_HTTP_ROUTES` HTTP routes: one apply writes at most that many keys,
which the controller does in about a second. One apply runs at a time; another
arriving meanwhile is answered at once that the controller is busy, so a client
that retries never queues a second pass behind the first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from natsmesh.control._store import Store
from natsmesh.traffic._routes import RouteConfig, RouteConfigError, parse_routes
from natsmesh.transport._kv import Unavailable
from natsmesh.wire._control import HTTP_KEY, ApplyReply, HttpTable, RouteTable, routes_key

log = logging.getLogger("natsmesh.controller")

MAX_ROUTE_FILE: Final = 1024 * 1024
MAX_SERVICES: Final = 1000
MAX_HTTP_ROUTES: Final = 1000

EmptyTargets = Callable[[RouteConfig, bool], Awaitable[tuple[dict[str, str], ...]]]


def _refused(error: str) -> ApplyReply:
    return ApplyReply(ok=False, error=error)


class RouteApply:
    """Validates route files and writes the route tables that changed."""

    def __init__(self, store: Store, empty_targets: EmptyTargets) -> None:
        self._store = store
        self._empty_targets = empty_targets
        self._busy = anyio.Lock()

    async def apply(self, data: bytes, *, allow_empty: bool = False) -> ApplyReply:
        """Validate a route file and write the tables that changed; never raises.

        A config that names services, subsets or HTTP targets no live instance
        serves is refused with those warnings, unless ``allow_empty``.
        """
        if len(data) > MAX_ROUTE_FILE:
            return _refused(f"route file of {len(data)} bytes: the limit is {MAX_ROUTE_FILE}")
        if self._busy.locked():
            return _refused("another apply is in progress: try again when it is done")
        async with self._busy:
            return await self._apply(data, allow_empty=allow_empty)

    async def _apply(self, data: bytes, *, allow_empty: bool) -> ApplyReply:
        try:
            config = parse_routes(data)
        except RouteConfigError as exc:
            problems = tuple({"path": p.path, "reason": p.reason} for p in exc.problems)
            return ApplyReply(ok=False, problems=problems, error="invalid route config")
        if len(config.services) > MAX_SERVICES:
            return _refused(f"{len(config.services)} services: the limit is {MAX_SERVICES}")
        if len(config.http) > MAX_HTTP_ROUTES:
            return _refused(f"{len(config.http)} HTTP routes: the limit is {MAX_HTTP_ROUTES}")
        warnings = await self._empty_targets(config, not allow_empty)
        if warnings and not allow_empty:
            return ApplyReply(
                ok=False,
                warnings=warnings,
                error="nothing live serves some of what the config names; fix it, or apply"
                " it anyway with --allow-empty",
            )
        wanted = _tables(config)
        revisions, unchanged = {}, []
        for key, value in sorted(wanted.items()):
            if self._store.value(key) == value:
                unchanged.append(key)
                continue
            if not await self._store.write(key, value) and not await self._store.write(key, value):
                return _refused(f"could not write {key}; the keys before it were written")
            revisions[key] = self._store.revision(key)
        stale = [
            key
            for key, entry in self._store.entries.items()
            if key.startswith("routes.") and key not in wanted and entry.value is not None
        ]
        try:
            for key in stale:
                await self._store.delete(key)
        except Unavailable as exc:
            return _refused(f"could not delete an old route table: {exc}")
        return ApplyReply(
            ok=True, revisions=revisions, unchanged=tuple(unchanged), warnings=warnings
        )

    def show(self, request: bytes) -> bytes:
        """The route tables (one service's, when ``request`` names it) as JSON:
        ``{key: {"revision": n, ...table}}``; keys that hold no table are left out.
        """
        wanted = request.decode("utf-8", "replace").strip()[:256]
        keys = [routes_key(wanted)] if wanted else None
        shown: dict[str, Any] = {}
        for key, entry in sorted(self._store.entries.items()):
            mine = key.startswith("routes.") or key == HTTP_KEY
            if entry.value is None or not mine or (keys is not None and key not in keys):
                continue
            try:
                shown[key] = {"revision": entry.revision, **json.loads(entry.value)}
            except ValueError as exc:
                log.warning("%s holds no JSON table: %s", key, exc)
        return json.dumps(shown).encode()


def _tables(config: RouteConfig) -> dict[str, bytes]:
    wanted: dict[str, bytes] = {
        routes_key(name): RouteTable(service=name, policy=policy.model_dump(mode="json"))
        .model_dump_json()
        .encode()
        for name, policy in config.services.items()
    }
    wanted[HTTP_KEY] = (
        HttpTable(routes=tuple(r.model_dump(mode="json") for r in config.http))
        .model_dump_json()
        .encode()
    )
    return wanted
