"""The ``natsmesh`` command line.

``NATS_URL`` is honoured everywhere, then ``--nats``. Commands that list things
take ``--json``. Failures print one line on stderr and exit non-zero:
2 usage, 3 no responders, 4 deadline exceeded, 5 remote error, 6 invalid reply,
1 anything else.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pydantic_core

from natsmesh import _micro
from natsmesh._cli_auth import register as register_auth
from natsmesh._cli_bench import add_bench
from natsmesh._cli_control import _table, add_commands
from natsmesh._cli_nats import (
    add_nats_options,
    apply_nats_options,
    maybe_embedded,
    port_number,
    positive,
    seconds,
    server_of,
)
from natsmesh._client import Mesh
from natsmesh._codec import Codec, DecodeError, decode
from natsmesh._controller import Controller
from natsmesh._credentials import CredentialsError
from natsmesh._discovery import gather
from natsmesh._embedded import EmbeddedNats
from natsmesh._errors import (
    DeadlineExceeded,
    InvalidReply,
    MeshError,
    NoResponders,
    RemoteError,
)
from natsmesh._runtime import ServiceRunner
from natsmesh._serve import load_target, serve, wait_for_signal
from natsmesh._subjects import validate_token
from natsmesh._transport import connect, nats_url

EXIT_CODES: dict[type[BaseException], int] = {
    NoResponders: 3,
    DeadlineExceeded: 4,
    RemoteError: 5,
    InvalidReply: 6,
}
MAX_JSON_ARG = 1024 * 1024
_SHOP_ROUTES = Path(__file__).parent.parent / "examples" / "routes.toml"


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command: Callable[[argparse.Namespace], Awaitable[int]] = args.command
    try:
        apply_nats_options(args)
        code = _run(command, args)
    except KeyboardInterrupt:
        code = 130
    except MeshError as exc:
        print(f"natsmesh: {exc}", file=sys.stderr)
        code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
    except CredentialsError as exc:
        print(f"natsmesh: {exc}", file=sys.stderr)
        code = 2
    except (OSError, ValueError) as exc:
        print(f"natsmesh: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


def _run(command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    return anyio.run(command, args, backend_options=backend_options())


def backend_options() -> dict[str, Any]:
    """uvloop where it is installed (``pip install natsmesh[fast]``), else asyncio's loop."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natsmesh", description="A service mesh on NATS.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], Awaitable[int]], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(command=func)
        return p

    nats_option = add_nats_options

    p = command(
        "up", _up, "start a working mesh: NATS (embedded unless given) and the example shop"
    )
    nats_option(p)
    p.add_argument(
        "--nats-port", type=port_number, default=4222, help="port of the embedded server"
    )
    p.add_argument(
        "--services",
        metavar="MODULE:ATTR",
        default="examples.shop:SERVICES",
        help="the services to run (default: the example shop)",
    )
    p.add_argument(
        "--routes",
        metavar="FILE",
        default=None,
        help="a route file to apply at start (default: the shop's examples/routes.toml)",
    )
    p.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="the HTTP gateway's port (default: 8080, else any free port)",
    )
    _auth_option(p)

    p = command("gateway", _gateway, "serve the HTTP gateway in front of the mesh (uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument(
        "--port", type=port_number, default=8080, help="port to listen on (8080; 0: any)"
    )
    p.add_argument("--workers", type=positive, default=1, help="worker processes (1)")
    _auth_option(p)
    nats_option(p)

    p = command("serve", _serve_cmd, "run the @service classes named by MODULE:ATTR")
    p.add_argument("target", metavar="MODULE:ATTR")
    p.add_argument("--instances", type=positive, default=1, help="instances of each service")
    nats_option(p)

    p = command("call", _call, "call SERVICE.ENDPOINT and print the reply as JSON")
    p.add_argument("target", metavar="SERVICE.ENDPOINT")
    p.add_argument("payload", nargs="?", metavar="JSON", help="request payload as JSON")
    p.add_argument("--timeout", type=seconds, default=5.0, metavar="SECONDS")
    p.add_argument("-H", "--header", action="append", default=[], metavar="KEY=VALUE")
    nats_option(p)

    for name, func, help in (
        ("ls", _ls, "list running services (natsmesh and any NATS micro service)"),
        ("info", _info, "show the endpoints and schemas of a service's instances"),
        ("stats", _stats, "show the request statistics of a service's instances"),
    ):
        p = command(name, func, help)
        if name != "ls":
            p.add_argument("service", type=_service_name)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--timeout", type=seconds, default=1.0, metavar="SECONDS")
        nats_option(p)

    add_commands(command, nats_option)
    register_auth(sub)
    add_bench(command, nats_option)

    p = command("nats", _nats, "run an embedded nats-server in the foreground")
    p.add_argument("--port", type=port_number, default=4222)

    return parser


def _auth_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        metavar="FILE",
        help="the gateway's auth file (TOML: API keys, JWT verifiers, per-route rules);"
        " every route is then closed unless a rule opens it",
    )


# -- argument types (argparse turns ValueError into a usage error, exit 2) ----------------


def _service_name(text: str) -> str:
    return validate_token("service", text)


# -- commands ------------------------------------------------------------------------------


async def _up(args: argparse.Namespace) -> int:
    services = load_target(args.services)
    routes_file = args.routes or _SHOP_ROUTES
    routes = None
    if args.routes or await anyio.Path(_SHOP_ROUTES).exists():
        routes = await anyio.Path(routes_file).read_bytes()
    url = server_of(args)
    from gateway import GatewayLimits, create_app
    from gateway import serve as serve_gateway

    auth = _gateway_auth(args.auth)
    sock = _gateway_socket("127.0.0.1", args.port)
    async with maybe_embedded(url, args.nats_port) as nats, Controller(nats) as controller:
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
                    functools.partial(serve_gateway, app, limits=limits, freeze=True), sock
                )
                names = ", ".join(f"{r.spec.name}@{r.spec.version}" for r in runners)
                print(
                    f"natsmesh up: nats {nats} | controller {controller.id} | services {names}"
                    f" | gateway {http} | Ctrl-C to stop",
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


def _gateway_socket(host: str, port: int | None) -> socket.socket:
    """The gateway's listening socket: ``port``, or 8080 and else any free port."""
    from gateway import bind

    if port is not None:
        return bind(host, port)
    try:
        return bind(host, 8080)
    except OSError:
        return bind(host, 0)


async def _gateway(args: argparse.Namespace) -> int:
    from gateway import GatewayLimits, create_app, run_workers
    from gateway import serve as serve_gateway

    limits = GatewayLimits()
    url = server_of(args)
    auth = _gateway_auth(args.auth)
    sock = _gateway_socket(args.host, args.port)
    if args.workers > 1:

        def announce(http: str) -> None:
            print(f"natsmesh gateway: {http} | workers {args.workers} | Ctrl-C to stop", flush=True)

        # uvicorn's supervisor blocks and owns the signals: this process only supervises.
        run_workers(
            sock=sock,
            workers=args.workers,
            nats=url,
            limits=limits,
            ready=announce,
            auth_file=args.auth,
        )
        return 0
    async with (
        Mesh(url, name="gateway", kind="gateway") as mesh,
        anyio.create_task_group() as tg,
    ):
        http = await tg.start(
            functools.partial(
                serve_gateway,
                create_app(mesh, limits=limits, auth=auth),
                limits=limits,
                freeze=True,
            ),
            sock,
        )
        print(f"natsmesh gateway: {http} | nats {nats_url(url)} | Ctrl-C to stop", flush=True)
        await wait_for_signal()
        tg.cancel_scope.cancel()
    return 0


async def _apply_when_leader(controller: Controller, routes: bytes, name: str) -> None:
    with anyio.fail_after(15):
        while not controller.is_leader:
            await controller.leader_changed.wait()
    reply = await controller.apply(routes)
    if not reply.ok:
        details = "; ".join(f"{p['path']}: {p['reason']}" for p in reply.problems)
        raise ValueError(f"{name}: {details or reply.error}")


async def _serve_cmd(args: argparse.Namespace) -> int:
    targets = load_target(args.target)

    def ready(runners: list[ServiceRunner]) -> None:
        ids = ", ".join(f"{r.spec.name}/{r.id}" for r in runners)
        print(f"natsmesh serve: {ids}", flush=True)

    await serve(targets, nats=server_of(args), instances=args.instances, ready=ready)
    return 0


async def _call(args: argparse.Namespace) -> int:
    payload: Any = None
    if args.payload is not None:
        if len(args.payload) > MAX_JSON_ARG:
            raise ValueError("payload argument larger than 1 MiB")
        try:
            payload = decode(args.payload.encode(), Codec.JSON)
        except DecodeError as exc:
            raise ValueError(f"payload is not valid JSON: {exc.reason}") from None
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"header {item!r}: expected KEY=VALUE")
        headers[key] = value
    async with Mesh(server_of(args), name="natsmesh-cli") as mesh:
        result = await mesh.call(args.target, payload, timeout=args.timeout, headers=headers)
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
    else:
        print(pydantic_core.to_json(result, indent=2).decode())
    return 0


async def _discover(args: argparse.Namespace, verb: str, model: Any) -> list[Any]:
    """Every answer to ``$SRV.<verb>``; raises NoResponders when a named service has none."""
    nc = await connect(server_of(args), name="natsmesh-cli")
    name = getattr(args, "service", None)
    try:
        answers = await gather(nc, verb, model, name=name, timeout=args.timeout)
    finally:
        await nc.close()
    if name is not None and not answers:
        raise NoResponders(
            f"no instance of {name!r} answered", service=name, endpoint="", subject=verb
        )
    return answers


async def _ls(args: argparse.Namespace) -> int:
    infos: list[_micro.Info] = await _discover(args, "INFO", _micro.Info)
    if args.json:
        return _print_json(infos)
    rows = [("NAME", "VERSION", "ID", "SUBSET", "ENDPOINTS", "KIND")]
    for i in infos:
        kind = "natsmesh" if i.is_mesh else "micro"
        subset = i.metadata.get(_micro.SUBSET_KEY, "-")
        rows.append((i.name, i.version, i.id, subset, ",".join(e.name for e in i.endpoints), kind))
    _table(rows)
    if not infos:
        print("no services answered", file=sys.stderr)
    return 0


def _print_json(answers: Sequence[pydantic.BaseModel]) -> int:
    print(json.dumps([a.model_dump() for a in answers], indent=2))
    return 0


async def _info(args: argparse.Namespace) -> int:
    infos: list[_micro.Info] = await _discover(args, "INFO", _micro.Info)
    if args.json:
        return _print_json(infos)
    for i in infos:
        print(f"{i.name} {i.version} id={i.id} {i.description}")
        for e in i.endpoints:
            idem = e.metadata.get("natsmesh.idempotent", "?")
            print(f"  {e.name:<20} subject={e.subject} queue={e.queue_group} idempotent={idem}")
    return 0


async def _stats(args: argparse.Namespace) -> int:
    stats: list[_micro.Stats] = await _discover(args, "STATS", _micro.Stats)
    if args.json:
        return _print_json(stats)
    rows = [("ID", "ENDPOINT", "REQUESTS", "ERRORS", "AVG MS", "QUEUE", "LAST ERROR")]
    for s in stats:
        for e in s.endpoints:
            avg = f"{e.average_processing_time / 1e6:.3f}"
            rows.append(
                (
                    s.id,
                    e.name,
                    str(e.num_requests),
                    str(e.num_errors),
                    avg,
                    _queue(e.data),
                    e.last_error,
                )
            )
    _table(rows)
    return 0


def _queue(data: dict[str, Any] | None) -> str:
    """In or out of the queue group (ejected by the controller); blank for other services."""
    if not data or "queue_ejected" not in data:
        return ""
    ejections = data.get("queue_ejections", 0)
    return (
        f"out ({ejections} ejections)" if data["queue_ejected"] else f"in ({ejections} ejections)"
    )


async def _nats(args: argparse.Namespace) -> int:
    async with EmbeddedNats(port=args.port or None) as server:
        print(f"nats-server {server.version} at {server.url} (Ctrl-C to stop)", flush=True)
        await wait_for_signal()
    return 0
