"""``natsmesh bench``: the data path, the control plane, traffic policy and the gateway.

Every bench prints first what it ran on (:mod:`natsmesh.bench._env`) and puts it
under ``"environment"`` in ``--json``; its child processes run on the same event
loop as the bench (``--loop``). A bench that cannot produce figures says why in
one line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from natsmesh.bench._env import BenchError, environment, header
from natsmesh.cli._nats import maybe_embedded, positive, seconds, server_of
from natsmesh.ops._loop import resolve
from natsmesh.transport._link import Link

Command = Callable[[argparse.Namespace], Awaitable[int]]


def add_bench(
    command: Callable[[str, Command, str], argparse.ArgumentParser],
    nats_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = command(
        "bench",
        _bench,
        "data: Mesh.call against hand-written nats-py; control: route convergence and scale;"
        " traffic: tail latency with a slow instance; gateway: HTTP against a minimal bridge;"
        " observe: Mesh.call with metrics on (and observed) against off",
    )
    p.add_argument(
        "which",
        nargs="?",
        choices=("data", "control", "traffic", "gateway", "observe"),
        default="data",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--seconds",
        type=seconds,
        help="data: measuring time per level (6); observe: per level (5);"
        " control: heartbeat window (10); traffic: per mode (4); gateway: per target (20)",
    )
    p.add_argument("--clients", type=positive, default=50, help="control: mesh clients")
    p.add_argument("--applies", type=positive, default=20, help="control: route changes")
    p.add_argument("--instances", type=int, default=5000, help="control: simulated instances")
    p.add_argument(
        "--concurrency", type=positive, default=64, help="gateway: connections of the load (64)"
    )
    p.add_argument(
        "--load",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="gateway: the load generator (auto: wrk when it is on PATH, else the built-in one)",
    )
    nats_option(p)


async def _bench(args: argparse.Namespace) -> int:
    if args.which == "control" and not 1 <= args.instances <= 100_000:
        raise ValueError("--instances must be within 1..100000")
    loop = resolve(getattr(args, "loop", "auto"))
    if server_of(args):
        # The benchmarks make many connections of their own: check the server once, here.
        await (
            await Link.open(
                server_of(args), name="natsmesh-bench", give_up_after=args.connect_timeout
            )
        ).close()
    try:
        async with maybe_embedded(server_of(args), 0) as url:
            env = await environment(url, loop=loop, http=args.which == "gateway")
            if not args.json:
                print(header(env), flush=True)
            result, text = await _run(args, url, loop)
    except BenchError as exc:
        print(f"natsmesh bench {args.which}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"environment": env, **result}) if args.json else text)
    return 0


async def _run(args: argparse.Namespace, url: str, loop: str) -> tuple[dict[str, Any], str]:
    from natsmesh.bench import _control as _bench_control
    from natsmesh.bench import _data as _bench
    from natsmesh.bench import _gateway as _bench_gateway
    from natsmesh.bench import _traffic as _bench_traffic

    if args.which == "gateway":
        result = await _bench_gateway.run(
            url,
            concurrency=args.concurrency,
            seconds=args.seconds or 20.0,
            loop=loop,
            load=args.load,
        )
        return result, _bench_gateway.format_result(result)
    if args.which == "observe":
        from natsmesh.bench import _observe as _bench_observe

        result = await _bench_observe.run(url, seconds=args.seconds or 5.0, loop=loop)
        return result, _bench_observe.format_table(result)
    if args.which == "traffic":
        result = await _bench_traffic.run(url, seconds=args.seconds or 4.0, loop=loop)
        return result, _bench_traffic.format_result(result)
    if args.which == "control":
        result = await _bench_control.run(
            url,
            clients=args.clients,
            applies=args.applies,
            instances=args.instances,
            seconds=args.seconds or 10.0,
            loop=loop,
        )
        return result, _bench_control.format_result(result)
    result = await _bench.run_bench(url, seconds=args.seconds or 6.0, loop=loop)
    return result, _bench.format_table(result)
