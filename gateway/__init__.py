"""gateway: HTTP in front of a natsmesh service mesh, as a plain ASGI application.

::

    from gateway import create_app
    from natsmesh import Mesh

    async with Mesh(nats_url, name="gateway", kind="gateway") as mesh:
        app = create_app(mesh)  # any ASGI server; `natsmesh gateway` runs uvicorn

``POST /{service}/{endpoint}`` with a JSON body calls any running service; the
control plane's HTTP routes add ``METHOD /path/{param}`` → ``service.endpoint``,
with path and query parameters merged into the payload. JSON in and out (msgpack
to natsmesh services), typed error statuses, limits on every request,
``/openapi.json`` and ``/docs`` built from the services' schemas, ``/healthz``,
``/readyz`` and ``/metrics``. With a :class:`GatewayAuth` (an auth file: API
keys and JWT bearer tokens per route, see :mod:`gateway._auth_config`) every
route is closed unless a rule opens it, and the verified identity is the
services' ``ctx.caller``. The gateway uses only natsmesh's public API.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway._app import DEFAULT_FORWARD, Gateway
from gateway._auth import GatewayAuth, Identity
from gateway._auth_config import AuthConfigError
from gateway._limits import GatewayLimits
from gateway._request import BUDGET_HEADER
from gateway._server import bind, run_server, run_workers
from natsmesh import Mesh

__all__ = [
    "BUDGET_HEADER",
    "DEFAULT_FORWARD",
    "AuthConfigError",
    "Gateway",
    "GatewayAuth",
    "GatewayLimits",
    "Identity",
    "bind",
    "create_app",
    "run_server",
    "run_workers",
]


def create_app(
    mesh: Mesh,
    *,
    limits: GatewayLimits | None = None,
    forward_headers: Iterable[str] = DEFAULT_FORWARD,
    default_route: bool = True,
    owns_mesh: bool = False,
    title: str = "natsmesh gateway",
    auth: GatewayAuth | None = None,
) -> Gateway:
    """The gateway's ASGI application, calling services through ``mesh``.

    ``forward_headers`` are the client headers passed on to services (by default
    ``x-request-id`` and ``x-canary``); the mesh's own (``Mesh-*``, ``Nats-*``,
    ``traceparent``, ``Content-Type``) are refused here (ValueError) and always
    dropped from requests. ``default_route=False`` closes ``POST /{service}/{endpoint}``,
    leaving only the control plane's HTTP routes. With ``owns_mesh`` the app
    enters ``mesh`` at lifespan startup and leaves it at shutdown; otherwise the
    caller keeps it entered while the app serves.

    With ``auth`` (``GatewayAuth.load("auth.toml")``) each route needs what its
    rule says (default: nobody), ``/metrics`` and the docs what the file's
    ``[pages]`` says (default: nobody), ``/healthz`` and ``/readyz`` nothing.
    A refusal is a 401 with ``WWW-Authenticate`` (no valid credential) or a 403
    (a valid identity the rule does not allow). The credential headers can then
    not be in ``forward_headers`` (ValueError): they never reach services.
    """
    return Gateway(
        mesh,
        limits=limits or GatewayLimits(),
        forward_headers=forward_headers,
        default_route=default_route,
        owns_mesh=owns_mesh,
        title=title,
        auth=auth,
    )
