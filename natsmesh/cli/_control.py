"""The control-plane commands of the ``natsmesh`` CLI: controller, routes, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pydantic

from natsmesh.cli._exit import UsageError
from natsmesh.cli._nats import server_of
from natsmesh.control._controller import Controller
from natsmesh.control._route_apply import MAX_ROUTE_FILE
from natsmesh.security._policy import PolicyError, load_policy
from natsmesh.services._serve import wait_for_signal
from natsmesh.transport._link import Link
from natsmesh.transport._transport import NoReply, NoResponse
from natsmesh.wire._control import (
    ALLOW_EMPTY,
    HTTP_KEY,
    ApplyReply,
    RouteTable,
    SchemaConflict,
    StatusView,
    control_subject,
)
from natsmesh.wire._errors import MeshError, NoResponders
from natsmesh.wire._schema_text import printable
from natsmesh.wire._subjects import validate_token

Command = Callable[[argparse.Namespace], Awaitable[int]]
#: Enough for the largest apply the controller takes (MAX_SERVICES keys at ~1k writes/s),
#: and short: a request lost on its way (a partition) costs a retry this long.
APPLY_TIMEOUT = 10.0


def add_commands(
    command: Callable[[str, Command, str], argparse.ArgumentParser],
    nats_option: Callable[[argparse.ArgumentParser], None],
    one_shot: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The control-plane commands; ``one_shot`` adds the options of a command that exits."""
    p = command("controller", _controller, "run the controller (registry and route tables)")
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="the mesh access policy (TOML): foreign micro services are admitted to the"
        " registry only when it names them",
    )
    p.add_argument(
        "--replicas",
        type=int,
        choices=(1, 3, 5),
        default=1,
        help="replicas of the KV bucket of tables (1; 3 in a cluster of 3 or more servers)",
    )
    nats_option(p)

    p = command("routes", _routes, "apply or show the route tables")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser(
        "apply",
        help="validate a route config (TOML or JSON) through the controller and apply it",
    )
    apply.add_argument("file", metavar="FILE", help="a route config (TOML or JSON)")
    apply.add_argument(
        "--allow-empty",
        action="store_true",
        help="apply even where the file names services, subsets or HTTP targets"
        " that no live instance serves (refused otherwise)",
    )
    show = actions.add_parser(
        "show", help="print the route tables (every service's without a SERVICE)"
    )
    show.add_argument("service", nargs="?", metavar="SERVICE")
    for action in (apply, show):
        action.add_argument("--json", action="store_true", help="print JSON")
        one_shot(action)

    p = command(
        "status",
        _status,
        "each client's applied table revisions (SYNCED, STALE, REJECTED, or GONE when its"
        " reports stopped), and schema conflicts among a service's instances",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    one_shot(p)


async def _controller(args: argparse.Namespace) -> int:
    admitted = None
    if args.policy:
        try:
            policy = load_policy(args.policy)
        except PolicyError as exc:
            raise UsageError(str(exc)) from None
        admitted = [i.name for i in policy.identity if i.kind == "service"]
    controller = Controller(server_of(args), replicas=args.replicas, admitted=admitted)
    async with controller:
        line = f"natsmesh controller {controller.id} running (Ctrl-C to stop)"
        await wait_for_signal(ready=lambda: print(line, flush=True))
    return 0


async def _routes(args: argparse.Namespace) -> int:
    if args.action == "apply":
        return await _apply(args, Path(args.file))
    return await _show(args, args.service)


async def _ask(
    args: argparse.Namespace,
    name: str,
    payload: bytes,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 5.0,
) -> bytes:
    link = await Link.open(server_of(args), name="natsmesh-cli", give_up_after=args.connect_timeout)
    try:
        msg = await link.request(
            control_subject("mesh", name), payload, timeout=timeout, headers=headers or {}
        )
    except NoReply:
        # A controller took the request (else the server says no responders) but has
        # not answered: it may still be working on it.
        raise MeshError(
            f"the controller did not answer {name} within {timeout:g} s; it may still be"
            " working on it: see 'natsmesh routes show' and 'natsmesh status'"
        ) from None
    except NoResponse:
        raise NoResponders(
            "no controller answered: start one with 'natsmesh controller'",
            service="controller",
            endpoint=name,
            subject=control_subject("mesh", name),
        ) from None
    finally:
        await link.close()
    return msg.data


async def _apply(args: argparse.Namespace, path: Path) -> int:
    file = anyio.Path(path)
    try:
        if (await file.stat()).st_size > MAX_ROUTE_FILE:
            raise UsageError(f"{path}: larger than {MAX_ROUTE_FILE // 1024} KiB, the limit")
        data = await file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    headers = {ALLOW_EMPTY: "1"} if args.allow_empty else None
    answer = await _ask(args, "routes.apply", data, headers, timeout=APPLY_TIMEOUT)
    reply = ApplyReply.model_validate_json(answer)
    if args.json:
        print(reply.model_dump_json(indent=2))
    for problem in reply.problems:
        print(f"natsmesh: {path}: {problem['path']}: {problem['reason']}", file=sys.stderr)
    for warning in reply.warnings:
        print(f"natsmesh: {path}: warning: {warning['path']}: {warning['reason']}", file=sys.stderr)
    if not reply.ok:
        if reply.warnings or not reply.problems:
            print(f"natsmesh: {reply.error}", file=sys.stderr)
        return 1
    if not args.json:
        for key, revision in sorted(reply.revisions.items()):
            print(f"{key}: revision {revision}")
        if reply.unchanged:
            print(f"unchanged: {some_of(reply.unchanged)}")
    return 0


#: Names a one-line summary lists before it counts the rest (a file may hold 1,000).
NAMES_SHOWN = 10


def some_of(names: Sequence[str], shown: int = NAMES_SHOWN) -> str:
    """``a, b, c`` or, for more than ``shown``, the first ones and how many more."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


async def _show(args: argparse.Namespace, service: str | None) -> int:
    if service:
        try:
            validate_token("service", service)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    shown: dict[str, Any] = json.loads(await _ask(args, "routes.show", (service or "").encode()))
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    if service and not shown:
        print(f"{service}: no route table (its calls get the default policy)")
        return 0
    rows = [("SERVICE", "REVISION", "TIMEOUT", "BALANCER", "SUBSETS")]
    for key, value in shown.items():
        if key == HTTP_KEY:
            continue
        try:
            table = RouteTable.model_validate({k: v for k, v in value.items() if k != "revision"})
        except pydantic.ValidationError:
            continue
        policy = table.policy
        subsets = ",".join(f"{s['name']}={s['weight']}" for s in policy.get("subsets", []))
        rows.append(
            (
                table.service,
                str(value["revision"]),
                str(policy.get("timeout")),
                str(policy.get("load_balancer")),
                subsets or "-",
            )
        )
    _table(rows)
    http = shown.get(HTTP_KEY, {}).get("routes", [])
    for route in http:
        print(f"  {route['method']:<6} {route['path']:<30} -> {route['target']}")
    return 0


async def _status(args: argparse.Namespace) -> int:
    view = StatusView.model_validate_json(await _ask(args, "status.show", b""))
    if args.json:
        print(view.model_dump_json(indent=2))
        return 0
    rows = [("CLIENT", "KIND", "SERVICE", "APPLIED", "LATEST", "STATE")]
    for r in view.rows:
        rows.append((r.client, r.kind, r.service, str(r.applied), str(r.latest), r.state))
    _table(rows)
    print_conflicts(view.conflicts)
    return 0


def print_conflicts(conflicts: Sequence[SchemaConflict]) -> None:
    """One line per schema conflict, after a listing (on stderr: stdout stays a table)."""
    for conflict in conflicts:
        print(f"natsmesh: schema conflict: {conflict}", file=sys.stderr)


def _table(rows: Sequence[Sequence[str]]) -> None:
    # Cells can come from any service on the network: nothing a terminal would act on.
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
