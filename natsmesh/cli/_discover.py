"""``natsmesh call``, ``ls``, ``info``, ``stats``: one call, or what services say of themselves.

``ls``, ``info`` and ``stats`` ask every instance through the NATS Services API
(``$SRV``), so they list foreign micro services too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pydantic
import pydantic_core

from natsmesh.cli._call import call_target, parse_headers, parse_payload
from natsmesh.cli._control import _table, print_conflicts
from natsmesh.cli._nats import seconds, server_of
from natsmesh.cli._types import Command, Option
from natsmesh.client._client import Mesh
from natsmesh.client._discovery import gather
from natsmesh.control._controller import from_info
from natsmesh.control._registry import schema_conflicts
from natsmesh.transport._link import Link
from natsmesh.wire import _micro
from natsmesh.wire._control import Announcement
from natsmesh.wire._errors import NoResponders
from natsmesh.wire._schema_text import printable, schema_text
from natsmesh.wire._subjects import validate_token


def add_discovery(command: Command, one_shot: Option) -> None:
    """The ``call``, ``ls``, ``info`` and ``stats`` commands."""
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


# argparse turns ValueError into a usage error, exit 2
def _service_name(text: str) -> str:
    try:
        return validate_token("service", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    link = await Link.open(server_of(args), name="natsmesh-cli", give_up_after=args.connect_timeout)
    name = getattr(args, "service", None)
    try:
        answers = await gather(link, verb, model, name=name, timeout=args.timeout)
    finally:
        await link.close()
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
