"""``natsmesh bench``: the data path, the control plane, traffic policy and the gateway."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable

from natsmesh._cli_nats import maybe_embedded, positive, seconds, server_of
from natsmesh._transport import connect

Command = Callable[[argparse.Namespace], Awaitable[int]]


def add_bench(
    command: Callable[[str, Command, str], argparse.ArgumentParser],
    nats_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = command(
        "bench",
        _bench,
        "data: Mesh.call against hand-written nats-py; control: route convergence and scale",
    )
    p.add_argument(
        "which", nargs="?", choices=("data", "control", "traffic", "gateway"), default="data"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--seconds",
        type=seconds,
        help="data: measuring time per level (3); control: heartbeat window (10)",
    )
    p.add_argument("--clients", type=positive, default=50, help="control: mesh clients")
    p.add_argument("--applies", type=positive, default=20, help="control: route changes")
    p.add_argument("--instances", type=int, default=5000, help="control: simulated instances")
    p.add_argument(
        "--concurrency", type=positive, default=64, help="gateway: connections of the load (64)"
    )
    nats_option(p)


async def _bench(args: argparse.Namespace) -> int:
    from natsmesh import _bench, _bench_control, _bench_traffic

    if server_of(args):
        # The benchmarks make many connections of their own: check the server once, here.
        await (
            await connect(
                server_of(args), name="natsmesh-bench", give_up_after=args.connect_timeout
            )
        ).close()

    if args.which == "gateway":
        from natsmesh import _bench_gateway

        async with maybe_embedded(server_of(args), 0) as url:
            result = await _bench_gateway.run(
                url, concurrency=args.concurrency, seconds=args.seconds or 10.0
            )
        print(json.dumps(result) if args.json else _bench_gateway.format_result(result))
        return 0
    async with maybe_embedded(server_of(args), 0) as url:
        if args.which == "traffic":
            result = await _bench_traffic.run(url, seconds=args.seconds or 4.0)
            text = _bench_traffic.format_result(result)
        elif args.which == "control":
            if not 1 <= args.instances <= 100_000:
                raise ValueError("--instances must be within 1..100000")
            result = await _bench_control.run(
                url,
                clients=args.clients,
                applies=args.applies,
                instances=args.instances,
                seconds=args.seconds or 10.0,
            )
            text = _bench_control.format_result(result)
        else:
            result = await _bench.run_bench(url, seconds=args.seconds or 3.0)
            text = _bench.format_table(result)
    print(json.dumps(result) if args.json else text)
    return 0
