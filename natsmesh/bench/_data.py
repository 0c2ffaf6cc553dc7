"""``natsmesh bench``: Mesh.call against hand-written nats-py request/reply, in one run.

A child process serves, on one connection to the same nats-server:

- ``raw``: the nats-py code a developer writes by hand for the same job: a
  subscriber that decodes the msgpack payload into the pydantic model and
  replies with the model encoded, called with ``nc.request()`` by a client that
  encodes the model and validates the reply into it;
- ``mesh``: the same echo as a natsmesh ``@service``, called with ``Mesh.call``
  (budget, trace and caller headers, concurrency limit, stats, deadlines);
- ``bare``: a subscriber that echoes bytes, called with ``nc.request()`` and no
  model at all: the floor of nats-py request/reply, reported for reference.

The caller measures each at every concurrency in alternating rounds (raw and
mesh swap places every round), so drift on a shared machine hits all alike. It
reports rps, p50 and p99 over all rounds, and each mesh/raw ratio as the median
of the rounds' own ratios: a burst of load from a neighbour spoils one round's
pair, not the figure. Every worker of a round makes at least one call, however
short the round: a round always has figures.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.streams.text
import msgpack
import pydantic

from natsmesh.bench._env import BenchError
from natsmesh.client._client import Mesh
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._spec import endpoint, service
from natsmesh.transport._transport import NATS, connect

RAW_SUBJECT = "bench.raw.echo"
BARE_SUBJECT = "bench.bare.echo"
KINDS = ("raw", "mesh", "bare")
LEGEND = (
    "raw:  hand-written nats-py: nc.request() of the pydantic model as msgpack, validated back",
    "mesh: the same echo as a natsmesh @service, called with Mesh.call",
    "bare: nats-py request/reply of raw bytes, no model: the floor, for reference",
)
FEW_CALLS = 200  # per kind and level: fewer, and the figures are noise


class Item(pydantic.BaseModel):
    id: int
    name: str
    price: float
    tags: list[str]


@service("bench", version="1.0.0", description="echo for natsmesh bench", max_concurrency=4096)
class Echo:
    @endpoint(idempotent=True)
    async def echo(self, item: Item) -> Item:
        return item


SAMPLE = Item(id=42, name="widget", price=9.99, tags=["a", "b", "c"])


@dataclass(frozen=True)
class Figures:
    concurrency: int
    calls: int
    rps: float
    p50_ms: float
    p99_ms: float


async def _serve(url: str) -> None:
    nc = await connect(url, name="bench-server")

    async def raw(msg: Any) -> None:
        item = Item.model_validate(msgpack.unpackb(msg.data))
        await msg.respond(msgpack.packb(item.model_dump(mode="json")))

    async def bare(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(RAW_SUBJECT, "raw", cb=raw)
    await nc.subscribe(BARE_SUBJECT, "bare", cb=bare)
    async with ServiceRunner(Echo(), nats=nc):
        await nc.flush()
        print("ready", flush=True)
        # Runs until the parent closes our stdin.
        await anyio.to_thread.run_sync(sys.stdin.read)
    await nc.close()


async def _measure(
    call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float
) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while True:  # at least one call: a round that ends before its workers start has figures
            t0 = time.perf_counter()
            await call()
            done = time.perf_counter()
            latencies.append(done - t0)
            if done >= stop_at:
                break

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return len(latencies), time.perf_counter() - started, latencies


def _figures(concurrency: int, runs: list[tuple[int, float, list[float]]]) -> Figures:
    count = sum(r[0] for r in runs)
    elapsed = sum(r[1] for r in runs)
    lat = sorted(x for r in runs for x in r[2])
    if not lat or elapsed <= 0:
        raise BenchError(f"no call completed at concurrency {concurrency}")
    return Figures(
        concurrency=concurrency,
        calls=count,
        rps=count / elapsed,
        p50_ms=lat[len(lat) // 2] * 1000,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
    )


async def run_bench(
    url: str,
    *,
    concurrencies: tuple[int, ...] = (1, 128),
    seconds: float = 6.0,
    rounds: int = 40,
    loop: str = "auto",
) -> dict[str, Any]:
    """Run the benchmark against the server at ``url``; returns the figures as a dict.

    The service process runs on ``loop`` (``auto``, ``uvloop``, ``asyncio``). Raises
    BenchError when it does not start.
    """
    async with await anyio.open_process(
        [sys.executable, "-m", "natsmesh.bench._data", "--serve", url, loop], stderr=None
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        line = await anext(anyio.streams.text.TextReceiveStream(child.stdout), "")
        if line.strip() != "ready":
            raise BenchError(f"the bench service did not start: {line.strip()!r}")
        try:
            nc = await connect(url, name="bench")
            try:
                return await _compare(nc, concurrencies, seconds, rounds)
            finally:
                await nc.close()
        finally:
            await child.stdin.aclose()  # the service exits when its stdin closes
            with anyio.move_on_after(10) as scope:
                await child.wait()
            if scope.cancelled_caught:
                child.kill()


async def _compare(
    nc: NATS, concurrencies: tuple[int, ...], seconds: float, rounds: int
) -> dict[str, Any]:
    bare_payload = msgpack.packb(SAMPLE.model_dump(mode="json"))

    async def raw() -> Item:
        msg = await nc.request(RAW_SUBJECT, msgpack.packb(SAMPLE.model_dump(mode="json")), 5)
        return Item.model_validate(msgpack.unpackb(msg.data))

    async def bare() -> Any:
        return await nc.request(BARE_SUBJECT, bare_payload, timeout=5)

    results: dict[str, Any] = {kind: [] for kind in KINDS}
    results["ratio"] = []
    async with Mesh(nc, name="bench") as mesh:

        async def meshed() -> Item:
            return await mesh.call("bench.echo", SAMPLE, response=Item, timeout=5)

        calls = {"raw": raw, "mesh": meshed, "bare": bare}
        for warm in calls.values():
            await _measure(warm, 16, 0.3)
        for c in concurrencies:
            runs: dict[str, list[tuple[int, float, list[float]]]] = {k: [] for k in KINDS}
            for i in range(rounds):
                order = KINDS if i % 2 == 0 else ("mesh", "raw", "bare")
                for kind in order:
                    runs[kind].append(await _measure(calls[kind], c, seconds / rounds))
            for kind in KINDS:
                results[kind].append(asdict(_figures(c, runs[kind])))
            pairs = [
                (_figures(c, [r]), _figures(c, [m]))
                for r, m in zip(runs["raw"], runs["mesh"], strict=True)
            ]
            results["ratio"].append(
                {
                    "concurrency": c,
                    "throughput": statistics.median(m.rps / r.rps for r, m in pairs),
                    "p50": statistics.median(m.p50_ms / r.p50_ms for r, m in pairs),
                    "p99": statistics.median(m.p99_ms / r.p99_ms for r, m in pairs),
                }
            )
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [*LEGEND, f"{'':6} {'conc':>5} {'calls':>8} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8}"]
    for kind in KINDS:
        for f in results[kind]:
            conc, rps, p50, p99 = f["concurrency"], f["rps"], f["p50_ms"], f["p99_ms"]
            lines.append(f"{kind:6} {conc:>5} {f['calls']:>8} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f}")
    for r in results["ratio"]:
        lines.append(
            # The bars: throughput under load, latency of a lone caller.
            f"mesh/raw {r['concurrency']:>3}: throughput {r['throughput']:.2f}"
            f"{' (bar >= 1.00)' if r['concurrency'] > 1 else ''}  "
            f"p50 {r['p50']:.2f}{' (bar <= 1.10)' if r['concurrency'] == 1 else ''}  "
            f"p99 {r['p99']:.2f}"
        )
    if any(f["calls"] < FEW_CALLS for kind in KINDS for f in results[kind]):
        lines.append(f"note: fewer than {FEW_CALLS} calls at some level: noise; raise --seconds")
    return "\n".join(lines)


if __name__ == "__main__":
    # The child side of run_bench: natsmesh.bench._data --serve URL LOOP
    from natsmesh.ops._loop import backend_options

    anyio.run(_serve, sys.argv[2], backend_options=backend_options(sys.argv[3]))
