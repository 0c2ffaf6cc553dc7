"""The ``natsmesh`` command line.

``--nats`` is honoured everywhere, else ``NATS_URL``. Commands that list things
take ``--json``. Failures print one line on stderr and exit non-zero. The exit
codes (``_cli_exit.EXIT_CODES``, shown by ``natsmesh --help``): 0 success, 1 any
other failure, 2 usage, 3 no responders, 4 deadline exceeded, 5 the service
answered with an error, 6 the reply is invalid, 7 cannot connect to NATS, 8 cannot
listen where told to, 130 interrupted, 141 standard output closed early.

Commands that do one thing and exit (``call``, ``ls``, ``info``, ``stats``,
``routes``, ``status``, ``bench``) give up after ``--connect-timeout`` when no
NATS server answers; long-running ones (``serve``, ``gateway``, ``controller``,
``up --nats``) keep trying, and log each change of the connection's state once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pydantic_core

from natsmesh.cli._auth import register as register_auth
from natsmesh.cli._bench import add_bench
from natsmesh.cli._call import call_target, parse_headers, parse_payload
from natsmesh.cli._control import _table, add_commands, print_conflicts
from natsmesh.cli._exit import ListenError, UsageError, epilog, fail
from natsmesh.cli._nats import (
    add_connect_timeout,
    add_nats_options,
    apply_nats_options,
    maybe_embedded,
    port_number,
    positive,
    seconds,
    server_of,
)
from natsmesh.cli._serve import add_serve
from natsmesh.client._client import Mesh
from natsmesh.client._discovery import gather
from natsmesh.control._controller import Controller, from_info
from natsmesh.control._registry import schema_conflicts
from natsmesh.ops._loop import add_loop_options
from natsmesh.ops._loop import run as run_on_loop
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._serve import load_target, serve, wait_for_signal
from natsmesh.transport._transport import connect, nats_url
from natsmesh.wire import _micro
from natsmesh.wire._control import Announcement
from natsmesh.wire._errors import NoResponders
from natsmesh.wire._schema_text import printable, schema_text
from natsmesh.wire._subjects import validate_token

_SHOP = "examples.shop:SERVICES"
_SHOP_ROUTES = Path(__file__).parents[2] / "examples" / "routes.toml"
DEFAULT_HTTP_PORT = 8080


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe is still ours to report
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # one line and its exit code; a bug keeps its traceback
        code = fail(exc)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)  # --help and usage errors exit here (SystemExit)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    apply_nats_options(args)
    command: Callable[[argparse.Namespace], Awaitable[int]] = args.command
    return _run(command, args)


def _run(command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    return run_on_loop(command, args, loop=getattr(args, "loop", "auto"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="natsmesh",
        description="A service mesh on NATS.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], Awaitable[int]], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(command=func)
        # Also after the command (`natsmesh call -v ...`); SUPPRESS keeps the default
        # from overriding a -v given before it.
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log debug messages",
        )
        return p

    def nats_option(p: argparse.ArgumentParser) -> None:
        add_nats_options(p)

    def one_shot(p: argparse.ArgumentParser) -> None:
        add_nats_options(p)
        add_connect_timeout(p)

    p = command(
        "up",
        _up,
        "start a working mesh: NATS (embedded unless --nats), a controller, services and"
        " the HTTP gateway",
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
    _auth_option(p)

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

    add_serve(command)

    p = command("call", _call, "call SERVICE.ENDPOINT and print the reply as JSON")
    p.add_argument("target", metavar="SERVICE.ENDPOINT", type=call_target)
    p.add_argument(
        "payload",
        nargs="?",
        metavar="JSON",
        help="request payload as JSON; '-' reads it from standard input",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="the call's whole budget, retries included (default: the service's route"
        " timeout, else 5)",
    )
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'KEY: VALUE'",
        help="a request header, as 'KEY: VALUE' or KEY=VALUE; repeat for more",
    )
    one_shot(p)

    for name, func, help in (
        (
            "ls",
            _ls,
            "list running services (natsmesh and any NATS micro service), and schema"
            " conflicts among a service's instances",
        ),
        ("info", _info, "show the endpoints of a service's instances, with their schemas"),
        ("stats", _stats, "show the request statistics of a service's instances"),
    ):
        p = command(name, func, help)
        if name != "ls":
            p.add_argument("service", type=_service_name)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument(
            "--timeout",
            type=seconds,
            default=1.0,
            metavar="SECONDS",
            help="how long to collect answers (1)",
        )
        one_shot(p)

    add_commands(command, nats_option, one_shot)
    register_auth(sub)

    def bench_options(p: argparse.ArgumentParser) -> None:
        add_nats_options(p, embedded=True)
        add_connect_timeout(p)

    add_bench(command, bench_options)

    p = command("nats", _nats, "run an embedded nats-server in the foreground")
    p.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="client port (default: 4222, else any free port, which the ready line shows;"
        " a port given here that is taken is an error; 0: any free port)",
    )
    add_loop_options(sub.choices)

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
    try:
        return validate_token("service", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- commands ------------------------------------------------------------------------------


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
    from gateway import GatewayLimits, create_app
    from gateway import serve as serve_gateway

    auth = _gateway_auth(args.auth)
    sock, moved = _gateway_socket("127.0.0.1", args.port)
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
                    functools.partial(serve_gateway, app, limits=limits, freeze=True), sock
                )
                names = ", ".join(f"{r.spec.name}@{r.spec.version}" for r in runners)
                print(
                    f"natsmesh up: nats {nats}{embedded.note} | controller {controller.id}"
                    f" | services {names} | gateway {http}{moved} | Ctrl-C to stop",
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
    from gateway import GatewayLimits, create_app, run_workers
    from gateway import serve as serve_gateway

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
                serve_gateway,
                create_app(mesh, limits=limits, auth=auth),
                limits=limits,
                freeze=True,
            ),
            sock,
        )
        print(
            f"natsmesh gateway: {http}{moved} | nats {nats_url(url)} | Ctrl-C to stop",
            flush=True,
        )
        await wait_for_signal()
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


async def _call(args: argparse.Namespace) -> int:
    payload = parse_payload(args.payload)
    headers = parse_headers(args.header)
    # One call, then gone: the tables are read once (no KV watch), so the route's
    # policy applies without a watch's setup cost.
    async with Mesh(
        server_of(args), name="natsmesh-cli", watch=False, connect_timeout=args.connect_timeout
    ) as mesh:
        result = await mesh.call(args.target, payload, timeout=args.timeout, headers=headers)
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
    else:
        print(pydantic_core.to_json(result, indent=2).decode())
    return 0


async def _discover(args: argparse.Namespace, verb: str, model: Any) -> list[Any]:
    """Every answer to ``$SRV.<verb>``; raises NoResponders when a named service has none."""
    nc = await connect(server_of(args), name="natsmesh-cli", give_up_after=args.connect_timeout)
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
    print_conflicts(schema_conflicts(_announced(infos)))
    return 0


def _announced(infos: Sequence[_micro.Info]) -> Iterator[Announcement]:
    """The registry's view of each instance (one that cannot be one is left out)."""
    for info in infos:
        with contextlib.suppress(pydantic.ValidationError, ValueError):
            yield from_info(info)


def _print_json(answers: Sequence[pydantic.BaseModel]) -> int:
    print(json.dumps([a.model_dump() for a in answers], indent=2))
    return 0


async def _info(args: argparse.Namespace) -> int:
    infos: list[_micro.Info] = await _discover(args, "INFO", _micro.Info)
    if args.json:
        return _print_json(infos)
    for i in infos:
        print(printable(f"{i.name} {i.version} id={i.id} {i.description}".rstrip()))
        for e in i.endpoints:
            idem = e.metadata.get("natsmesh.idempotent", "?")
            print(
                printable(
                    f"  {e.name:<20} subject={e.subject} queue={e.queue_group} idempotent={idem}"
                )
            )
            print(f"    request:  {schema_text(e.metadata.get('natsmesh.request_schema'))}")
            print(f"    response: {schema_text(e.metadata.get('natsmesh.response_schema'))}")
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
    embedded = maybe_embedded(None, args.port, flag="--port")
    async with embedded as url:
        version = embedded.version
        print(f"nats-server {version} at {url}{embedded.note} | Ctrl-C to stop", flush=True)
        await wait_for_signal()
    return 0
