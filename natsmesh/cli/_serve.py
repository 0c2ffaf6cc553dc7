"""``natsmesh serve``: run @service classes in this process, or in supervised workers."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

from natsmesh.cli._nats import add_nats_options, positive, server_of
from natsmesh.services import _workers
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._serve import load_target, serve

__all__ = ["add_serve"]

Command = Callable[[argparse.Namespace], Awaitable[int]]


def add_serve(command: Callable[[str, Command, str], argparse.ArgumentParser]) -> None:
    _serve_parser(command("serve", _serve_cmd, "run the @service classes named by MODULE:ATTR"))


def _serve_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the @service classes (or instances) named by MODULE:ATTR until SIGINT or"
        " SIGTERM, then drain them. MODULE is imported from the working directory first."
        " --instances runs several instances in this one process: cheap, but they share"
        " its event loop and die together. --workers runs that many processes, each with"
        " its own connections and instances: a crash or a busy handler takes one worker,"
        " which is restarted. Use workers for production and CPU-bound handlers,"
        " instances for development."
    )
    p.add_argument("target", metavar="MODULE:ATTR")
    p.add_argument(
        "--instances",
        type=positive,
        default=1,
        metavar="N",
        help="instances of each service in each process (1)",
    )
    p.add_argument(
        "--workers",
        type=positive,
        default=None,
        metavar="N",
        help="run N worker processes under this one, which restarts a worker that dies"
        " (default: none, everything in this process)",
    )
    add_nats_options(p)


async def _serve_cmd(args: argparse.Namespace) -> int:
    _workers.bind_to_supervisor()
    targets = load_target(args.target)  # in a supervisor too: a bad target fails here, once
    if args.workers is not None:
        return await _supervise(args)

    def ready(runners: list[ServiceRunner]) -> None:
        ids = ", ".join(f"{r.spec.name}/{r.id}" for r in runners)
        print(f"{_workers.READY_PREFIX.decode()}{ids}", flush=True)

    await serve(targets, nats=server_of(args), instances=args.instances, ready=ready)
    return 0


async def _supervise(args: argparse.Namespace) -> int:
    argv = ["serve", args.target, "--instances", str(args.instances)]
    if getattr(args, "loop", None):  # the event loop option of long-running commands
        argv += ["--loop", args.loop]
    url = server_of(args)
    supervisor = _workers.Supervisor(
        argv, workers=args.workers, env={"NATS_URL": url} if url else {}
    )

    def ready(workers: list[_workers.Worker]) -> None:
        each = " | ".join(f"worker {w.index} pid {w.pid}: {w.ready_line}" for w in workers)
        print(f"natsmesh serve: {len(workers)} workers | {each} | Ctrl-C to stop", flush=True)

    return await supervisor.run(ready)
