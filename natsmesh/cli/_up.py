"""``natsmesh up`` and ``natsmesh gateway``: the commands that serve HTTP.

``up`` starts a working mesh in one process (NATS, unless ``--nats``, a controller,
the services and the gateway); ``gateway`` serves the gateway alone, in front of a
mesh that runs elsewhere.
"""

from __future__ import annotations

import argparse
import errno
import functools
import socket
from pathlib import Path
from typing import Any

import anyio

from natsmesh import dashboard
from natsmesh.cli._exit import ListenError, UsageError
from natsmesh.cli._nats import add_nats_options, maybe_embedded, port_number, positive, server_of
from natsmesh.cli._observe import DASHBOARD_PORT, listening
from natsmesh.cli._types import Command, Option
from natsmesh.client._client import Mesh
from natsmesh.control._controller import Controller
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._serve import load_target, serve, wait_for_signal
from natsmesh.transport._transport import nats_url

_SHOP = "examples.shop:SERVICES"
_SHOP_ROUTES = Path(__file__).parents[2] / "examples" / "routes.toml"
DEFAULT_HTTP_PORT = 8080


def add_up(command: Command) -> None:
    """The ``up`` command."""
    p = command(
        "up",
        _up,
        "start a working mesh: NATS (embedded unless --nats), a controller, services,"
        " the HTTP gateway and the dashboard",
    )
    add_nats_options(p, embedded=True)
    p.add_argument(
        "--nats-port",
        type=port_number,
        default=None,
        metavar="PORT",
        help="port of the embedded server (default: 4222, else any free port, which the"
        " ready line shows; a port given here that is taken is an error; 0: any free port)",
    )
    p.add_argument(
        "--services",
        metavar="MODULE:ATTR",
        default=_SHOP,
        help="the @service classes to run, as for 'natsmesh serve' (default: the example"
        " shop, examples.shop:SERVICES)",
    )
    p.add_argument(
        "--routes",
        metavar="FILE",
        default=None,
        help="a route file to apply at start (default: with the example shop, its"
        " examples/routes.toml; with --services, none)",
    )
    p.add_argument(
        "--port",
        type=port_number,
        default=None,
        help=f"the HTTP gateway's port (default: {DEFAULT_HTTP_PORT}, else any free port;"
        " a port given here that is taken is an error; 0: any free port)",
    )
    p.add_argument(
        "--dashboard-port",
        type=port_number,
        default=None,
        metavar="PORT",
        help=f"the web dashboard's port on 127.0.0.1 (default: {DASHBOARD_PORT}, else any"
        " free port; 0: any free port)",
    )
    _auth_option(p)


def add_gateway(command: Command, nats_option: Option) -> None:
    """The ``gateway`` command."""
    p = command("gateway", _gateway, "serve the HTTP gateway in front of the mesh (uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument(
        "--port",
        type=port_number,
        default=None,
        help=f"port to listen on (default: {DEFAULT_HTTP_PORT}, else any free port, which the"
        " ready line shows; a port given here that is taken is an error; 0: any free port)",
    )
    p.add_argument(
        "--workers", type=positive, default=1, metavar="N", help="uvicorn worker processes (1)"
    )
    _auth_option(p)
    nats_option(p)


def _auth_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        metavar="FILE",
        help="the gateway's auth file (TOML: API keys, JWT verifiers, per-route rules);"
        " every route is then closed unless a rule opens it",
    )


async def _up(args: argparse.Namespace) -> int:
    services = load_target(args.services)
    # The shop's routes go with the shop: other services would get its HTTP routes.
    shop = args.services == _SHOP and await anyio.Path(_SHOP_ROUTES).exists()
    routes_file = args.routes or (_SHOP_ROUTES if shop else None)
    routes = None
    if routes_file is not None:
        try:
            routes = await anyio.Path(routes_file).read_bytes()
        except OSError as exc:
            raise UsageError(f"{routes_file}: {exc.strerror}") from None
    url = server_of(args)
    from gateway import GatewayLimits, create_app, run_server

    auth = _gateway_auth(args.auth)
    sock, moved = _gateway_socket("127.0.0.1", args.port)
    board_sock, board_moved = listening("127.0.0.1", args.dashboard_port, DASHBOARD_PORT)
    embedded = maybe_embedded(url, args.nats_port)
    async with embedded as nats, Controller(nats) as controller:
        if routes is not None:
            await _apply_when_leader(controller, routes, str(routes_file))
        async with (
            Mesh(nats, name="gateway", kind="gateway") as mesh,
            anyio.create_task_group() as tg,
        ):
            limits = GatewayLimits()
            app = create_app(mesh, limits=limits, auth=auth)

            async def ready(runners: list[ServiceRunner]) -> None:
                # The gateway last: its first look at the services finds them all.
                http = await tg.start(
                    functools.partial(run_server, app, limits=limits, freeze=True), sock
                )
                board = await tg.start(functools.partial(dashboard.run, nats, board_sock))
                names = ", ".join(f"{r.spec.name}@{r.spec.version}" for r in runners)
                print(
                    f"natsmesh up: nats {nats}{embedded.note} | controller {controller.id}"
                    f" | services {names} | gateway {http}{moved}"
                    f" | dashboard {board}{board_moved} | Ctrl-C to stop",
                    flush=True,
                )

            await serve(services, nats=nats, ready=ready)
            tg.cancel_scope.cancel()
    return 0


def _gateway_auth(path: str | None) -> Any:
    """The gateway's auth (a ``GatewayAuth``) from ``--auth FILE``; None without one.

    Loaded before anything listens: a bad file is one error (AuthConfigError, a
    ValueError: every ``path: reason``) and a non-zero exit, never a gateway that
    starts open.
    """
    if path is None:
        return None
    from gateway import GatewayAuth

    return GatewayAuth.load(path)


def _gateway_socket(host: str, port: int | None) -> tuple[socket.socket, str]:
    """The gateway's listening socket, and a note for the ready line when it moved.

    ``port`` None is 8080, else any free port (the note says so); an explicit port
    that cannot be had is a ListenError naming it.
    """
    from gateway import bind

    try:
        return bind(host, DEFAULT_HTTP_PORT if port is None else port), ""
    except OSError as exc:
        if port is None and exc.errno == errno.EADDRINUSE:
            return bind(host, 0), f" (port {DEFAULT_HTTP_PORT} was taken)"
        where = f"{host}:{DEFAULT_HTTP_PORT if port is None else port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"port {port} on {host} is taken: stop what listens there, or choose another"
                " with --port (0: any free port)"
            ) from None
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None


async def _gateway(args: argparse.Namespace) -> int:
    from gateway import GatewayLimits, create_app, run_server, run_workers

    limits = GatewayLimits()
    url = server_of(args)
    auth = _gateway_auth(args.auth)
    sock, moved = _gateway_socket(args.host, args.port)
    if args.workers > 1:

        def announce(http: str) -> None:
            print(
                f"natsmesh gateway: {http}{moved} | workers {args.workers} | Ctrl-C to stop",
                flush=True,
            )

        # uvicorn's supervisor blocks and owns the signals: this process only supervises.
        run_workers(
            sock=sock,
            workers=args.workers,
            nats=url,
            limits=limits,
            ready=announce,
            auth_file=args.auth,
            loop=args.loop,
        )
        return 0
    async with (
        Mesh(url, name="gateway", kind="gateway") as mesh,
        anyio.create_task_group() as tg,
    ):
        http = await tg.start(
            functools.partial(
                run_server,
                create_app(mesh, limits=limits, auth=auth),
                limits=limits,
                freeze=True,
            ),
            sock,
        )
        line = f"natsmesh gateway: {http}{moved} | nats {nats_url(url)} | Ctrl-C to stop"
        await wait_for_signal(ready=lambda: print(line, flush=True))
        tg.cancel_scope.cancel()
    return 0


async def _apply_when_leader(controller: Controller, routes: bytes, name: str) -> None:
    with anyio.fail_after(15):
        while not controller.is_leader:
            await controller.leader_changed.wait()
    # The services start after the routes are applied: none is live yet.
    reply = await controller.apply(routes, allow_empty=True)
    if not reply.ok:
        details = "; ".join(f"{p['path']}: {p['reason']}" for p in reply.problems)
        raise ValueError(f"{name}: {details or reply.error}")
