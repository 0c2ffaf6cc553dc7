"""Targets to routes: the natsmesh subject convention, else ``$SRV`` discovery.

A call to a micro service written in another language (its subjects follow no
natsmesh convention) is resolved through ``$SRV`` and sent JSON. Routes are
remembered per target, a bounded number of them.
"""

from __future__ import annotations

import time
from typing import Final

from natsmesh.client import _discovery
from natsmesh.client._targets import Route
from natsmesh.transport._link import Link
from natsmesh.wire._codec import Codec
from natsmesh.wire._errors import ErrorKind, UnknownEndpoint
from natsmesh.wire._subjects import Subjects, parse_target, validate_name, validate_token

_DISCOVERY_WAIT: Final = 0.5
_MAX_ROUTES: Final = 10_000


class Resolver:
    """Routes of one Mesh client, by target (``"service.endpoint"``)."""

    def __init__(self, link: Link, subjects: Subjects) -> None:
        self._link = link
        self._subjects = subjects
        self.routes: dict[str, Route] = {}  # by target, bounded

    def route(self, target: str) -> Route:
        """The route of ``target``; raises InvalidName for a bad one."""
        return self.routes.get(target) or self._convention(target)

    def _convention(self, target: str) -> Route:
        service, endpoint = parse_target(target)
        route = Route(service, endpoint, self._subjects.endpoint(service, endpoint), Codec.MSGPACK)
        try:
            validate_name("endpoint", endpoint)
        except ValueError:
            # Never a subject token of anyone's ('.', '*', '>', whitespace): refuse.
            validate_token("endpoint", endpoint)
            # A micro service may use names natsmesh does not: only discovery can
            # tell where such an endpoint lives (an empty subject means "look it up").
            route = Route(service, endpoint, "", Codec.JSON, discovered_at=0.0)
        if len(self.routes) < _MAX_ROUTES:
            self.routes[target] = route
        return route

    async def reroute(self, target: str, route: Route, deadline: float) -> Route | None:
        """After *no responders*: ask ``$SRV`` where the endpoint lives, within the budget.

        Returns a new route for a micro service outside natsmesh's subject
        convention; raises UnknownEndpoint when the service runs without that
        endpoint; None when no instance of the service answers at all, or not
        before ``deadline``, or when the convention holds.
        """
        now = time.monotonic()
        if route.subject and route.discovered_at and now - route.discovered_at < 1.0:
            return None  # looked up a moment ago: the service is simply gone
        wait = min(_DISCOVERY_WAIT, deadline - now)
        if wait <= 0.001:
            return None
        info = await _discovery.first_info(self._link, route.service, timeout=wait)
        if info is None:
            return None
        for ep in info.endpoints:
            if ep.name == route.endpoint:
                if info.is_mesh and route.conventional:
                    return None  # the convention holds: the subset tried is simply down
                codec = Codec.MSGPACK if info.is_mesh else Codec.JSON
                found = Route(route.service, route.endpoint, ep.subject, codec, discovered_at=now)
                if found == route:
                    return None
                self.routes[target] = found
                return found
        raise UnknownEndpoint(
            f"service {route.service!r} has no endpoint {route.endpoint!r}",
            code=404,
            kind=ErrorKind.UNKNOWN_ENDPOINT,
            service=route.service,
            endpoint=route.endpoint,
            subject=route.subject,
        )
