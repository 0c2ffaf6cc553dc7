"""``natsmesh bench``: Mesh.call against raw nats-py request/reply, in one run.

An echo service with a pydantic payload runs in a child process, next to a raw
nats-py subscriber that echoes bytes; both sides use the same nats-server. The
caller measures raw ``request()`` and ``Mesh.call`` at each concurrency in
alternating rounds (so drift on a shared machine hits both alike) and reports
rps, p50, p99 and the mesh/raw ratios.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import anyio.streams.text
import pydantic

from natsmesh import _codec
from natsmesh._client import Mesh
from natsmesh._policy import NO_RETRY
from natsmesh._runtime import ServiceRunner
from natsmesh._spec import endpoint, service
from natsmesh._transport import connect

RAW_SUBJECT = "bench.raw.echo"


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
    rps: float
    p50_ms: float
    p99_ms: float


async def _serve(url: str) -> None:
    nc = await connect(url, name="bench-server")

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(RAW_SUBJECT, "raw", cb=echo)
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
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return len(latencies), time.perf_counter() - started, latencies


def _figures(concurrency: int, runs: list[tuple[int, float, list[float]]]) -> Figures:
    count = sum(r[0] for r in runs)
    elapsed = sum(r[1] for r in runs)
    lat = sorted(x for r in runs for x in r[2])
    return Figures(
        concurrency=concurrency,
        rps=count / elapsed,
        p50_ms=lat[len(lat) // 2] * 1000,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
    )


async def run_bench(
    url: str, *, concurrencies: tuple[int, ...] = (1, 128), seconds: float = 2.0, rounds: int = 3
) -> dict[str, Any]:
    """Run the benchmark against the server at ``url``; returns the figures as a dict."""
    async with await anyio.open_process(
        [sys.executable, "-m", "natsmesh._bench", "--serve", url]
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        line = await anext(anyio.streams.text.TextReceiveStream(child.stdout))
        if line.strip() != "ready":
            raise RuntimeError(f"bench service failed to start: {line!r}")
        try:
            return await _compare(url, concurrencies, seconds, rounds)
        finally:
            await child.stdin.aclose()  # the service exits when its stdin closes
            with anyio.move_on_after(10) as scope:
                await child.wait()
            if scope.cancelled_caught:
                child.kill()


async def _compare(
    url: str, concurrencies: tuple[int, ...], seconds: float, rounds: int
) -> dict[str, Any]:
    nc = await connect(url, name="bench-raw")
    payload = _codec.encode(SAMPLE.model_dump(mode="json"), _codec.Codec.MSGPACK)

    async def raw() -> Any:
        return await nc.request(RAW_SUBJECT, payload, timeout=5)

    results: dict[str, Any] = {"raw": [], "mesh": [], "ratio": []}
    try:
        async with Mesh(nc, name="bench", retry=NO_RETRY) as mesh:

            async def meshed() -> Any:
                return await mesh.call("bench.echo", SAMPLE, response=Item, timeout=5)

            for warm in (raw, meshed):
                await _measure(warm, 16, 0.3)
            for c in concurrencies:
                raw_runs, mesh_runs = [], []
                for _ in range(rounds):
                    raw_runs.append(await _measure(raw, c, seconds / rounds))
                    mesh_runs.append(await _measure(meshed, c, seconds / rounds))
                r, m = _figures(c, raw_runs), _figures(c, mesh_runs)
                results["raw"].append(asdict(r))
                results["mesh"].append(asdict(m))
                results["ratio"].append(
                    {
                        "concurrency": c,
                        "throughput": m.rps / r.rps,
                        "p50": m.p50_ms / r.p50_ms,
                        "p99": m.p99_ms / r.p99_ms,
                    }
                )
    finally:
        await nc.close()
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"{'':6} {'conc':>5} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8}"]
    for kind in ("raw", "mesh"):
        for f in results[kind]:
            conc, rps, p50, p99 = f["concurrency"], f["rps"], f["p50_ms"], f["p99_ms"]
            lines.append(f"{kind:6} {conc:>5} {rps:>10.0f} {p50:>8.3f} {p99:>8.3f}")
    for r in results["ratio"]:
        lines.append(
            f"ratio  {r['concurrency']:>5} throughput {r['throughput']:.2f}  "
            f"p50 {r['p50']:.2f}  p99 {r['p99']:.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # The child side of run_bench: natsmesh._bench --serve URL
    from natsmesh._cli import backend_options

    anyio.run(_serve, sys.argv[2], backend_options=backend_options())
