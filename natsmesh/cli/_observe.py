"""``natsmesh dashboard``, ``observe``, ``top`` and ``tap``: looking at the mesh."""

from __future__ import annotations

import argparse
import errno
import functools
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from natsmesh import dashboard
from natsmesh.cli._exit import ListenError, UsageError
from natsmesh.cli._nats import add_nats_options, port_number, server_of
from natsmesh.client._client import Mesh
from natsmesh.dashboard._app import Authorize, Headers
from natsmesh.dashboard._observer import Observer
from natsmesh.services._serve import wait_for_signal
from natsmesh.traffic._aggregate import Stat
from natsmesh.wire._subjects import validate_name

Command = Callable[[argparse.Namespace], Awaitable[int]]
DASHBOARD_PORT = 8081
OBSERVE_PORT = 9464  # Prometheus exporters' customary range


def add_observe(command: Callable[[str, Command, str], argparse.ArgumentParser]) -> None:
    for name, func, port, help in (
        ("dashboard", _dashboard, DASHBOARD_PORT, "serve the mesh's web dashboard and /metrics"),
        ("observe", _observe, OBSERVE_PORT, "serve mesh-wide Prometheus /metrics and the API"),
    ):
        p = command(name, func, help)
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
        p.add_argument(
            "--port",
            type=port_number,
            default=None,
            help=f"port (default: {port}, else any free port, which the ready line shows)",
        )
        p.add_argument(
            "--auth",
            metavar="FILE",
            help="the gateway's auth file format (API keys, JWT verifiers, rules by path);"
            " required with a --host other than loopback",
        )
        add_nats_options(p)
    p = command("top", _top, "show services' traffic in the terminal, refreshing in place")
    p.add_argument("--once", action="store_true", help="print one table (after ~5 s) and exit")
    add_nats_options(p)
    p = command("tap", _tap, "print a live sample of the requests a service serves")
    p.add_argument("service", type=_name)
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N (0: never)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_nats_options(p)


def _name(text: str) -> str:
    try:
        return validate_name("service", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listening(host: str, port: int | None, default: int) -> tuple[socket.socket, str]:
    """A socket on ``port``, else (``port`` None and ``default`` taken) any free one."""
    try:
        return dashboard.bind(host, default if port is None else port), ""
    except OSError as exc:
        if port is None and exc.errno == errno.EADDRINUSE:
            return dashboard.bind(host, 0), f" (port {default} was taken)"
        raise ListenError(f"cannot listen on {host}:{port or default}: {exc.strerror}") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorizer(path: str | None) -> Authorize | None:
    """The check of an auth file (the gateway's format) for the dashboard's routes; the
    page and its assets stay public (they hold no data), everything else needs a rule.
    """
    if path is None:
        return None
    from gateway import GatewayAuth

    try:
        auth = GatewayAuth.load(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--auth {path}: {exc}") from None

    def authorize(method: str, url: str, headers: Headers) -> tuple[int, Headers] | None:
        if url == "/" or url.startswith("/static/"):
            return None
        credentials = [(k, v) for k, v in headers if k in auth.header_names]
        try:
            auth.check(auth.policy(method, url, ""), credentials)
        except Exception as exc:  # gateway's Denied: its status and challenges
            status = getattr(exc, "status", None)
            if not isinstance(status, int):
                raise
            challenges = getattr(exc, "challenges", ())
            return status, [(b"www-authenticate", c) for c in challenges]
        return None

    return authorize


async def _serve(args: argparse.Namespace, *, ui: bool, default: int, what: str) -> int:
    if not _loopback(args.host) and args.auth is None:
        raise UsageError(f"--host {args.host} exposes the {what}: give --auth FILE too")
    authorize = authorizer(args.auth)
    sock, moved = listening(args.host, args.port, default)
    async with anyio.create_task_group() as tg:
        url = await tg.start(
            functools.partial(dashboard.run, server_of(args), sock, ui=ui, authorize=authorize)
        )
        line = f"natsmesh {what}: {url}{moved} | Ctrl-C to stop"
        await wait_for_signal(ready=lambda: print(line, flush=True))
        tg.cancel_scope.cancel()
    return 0


async def _dashboard(args: argparse.Namespace) -> int:
    return await _serve(args, ui=True, default=DASHBOARD_PORT, what="dashboard")


async def _observe(args: argparse.Namespace) -> int:
    return await _serve(args, ui=False, default=OBSERVE_PORT, what="observe")


def _cell(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "ms":
        return f"{value:.1f} ms"
    return f"{value:.1f}"


def top_table(observer: Observer) -> Any:
    """The services' numbers as a rich Table."""
    from rich.table import Table

    from natsmesh.dashboard import _views

    table = Table(title="natsmesh top", title_justify="left")
    for column in ("SERVICE", "INSTANCES", "REQ/S", "SUCCESS", "P50", "P99", "IN FLIGHT"):
        table.add_column(column, justify="left" if column == "SERVICE" else "right")
    now = time.monotonic()
    for s in _views.services(observer.aggregate, observer.instances, now):
        stat = Stat(s["requests"], s["failures"], s["rps"], s["success"], s["p50"], s["p99"])
        success = _cell(stat.success, "pct")
        if stat.success is not None and stat.success < 0.95:
            success = f"[red]{success}[/red]"
        table.add_row(
            s["name"],
            str(s["count"]),
            _cell(stat.rps, "rps"),
            success,
            _cell(stat.p50, "ms"),
            _cell(stat.p99, "ms"),
            str(s["in_flight"]),
        )
    return table


async def _top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    async with Mesh(server_of(args), name="natsmesh-top") as mesh, anyio.create_task_group() as tg:
        observer = Observer(mesh)
        await tg.start(observer.run)
        if args.once:
            for _ in range(3):  # rates need two summaries of each caller
                await observer.updated.wait()
            console.print(top_table(observer))
            tg.cancel_scope.cancel()
            return 0
        with Live(top_table(observer), console=console, auto_refresh=False) as live:
            while True:
                await observer.updated.wait()
                live.update(top_table(observer), refresh=True)
    return 0


async def _tap(args: argparse.Namespace) -> int:
    seen = 0
    async with (
        Mesh(server_of(args), name="natsmesh-tap") as mesh,
        anyio.create_task_group() as tg,
    ):
        observer = Observer(mesh)
        await tg.start(observer.run)
        async with observer.tap(args.service) as samples:
            async for sample in samples:
                if args.json:
                    print(json.dumps(sample), flush=True)
                else:
                    print(
                        f"{sample['instance']} {sample['endpoint']} from {sample['caller']}"
                        f" {sample['status']} {sample['latency_ms']:.2f} ms"
                        f" trace {sample['trace_id'] or '-'}",
                        flush=True,
                    )
                seen += 1
                if args.count and seen >= args.count:
                    break
        tg.cancel_scope.cancel()
    return 0
