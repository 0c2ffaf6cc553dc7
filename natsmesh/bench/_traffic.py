"""``natsmesh bench traffic``: tail latency with one slow instance out of four.

A child process runs four instances of an idempotent service; in the degraded
runs one of them answers 10x slower. With a controller in this process (so the
client knows the instances), the same steady load measures p50 and p99 for the
``queue`` balancer, ``p2c``, and ``p2c`` with hedging, against the p99 with all
four instances healthy, in one run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
import anyio.abc
import anyio.streams.text

from natsmesh.bench._env import BenchError
from natsmesh.client._client import Mesh
from natsmesh.control._controller import Controller
from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._serve import serve
from natsmesh.services._spec import endpoint, service

FAST = 0.002  # seconds of work per request on a healthy instance
MODES = {
    "queue": '[services.tail]\nload_balancer = "queue"\n',
    "p2c": '[services.tail]\nload_balancer = "p2c"\n',
    "p2c+hedging": (
        '[services.tail]\nload_balancer = "p2c"\n'
        "[services.tail.hedging]\npercentile = 90\nmax_ratio = 0.2\n"
    ),
}


@service("tail", version="1.0.0")
class Tail:
    def __init__(self, delay: float = FAST) -> None:
        self.delay = delay

    @endpoint(idempotent=True)
    async def work(self) -> str:
        await anyio.sleep(self.delay)
        return "done"


async def _instances(url: str, slow: int, loop: str) -> anyio.abc.Process:
    proc = await anyio.open_process(
        [sys.executable, "-m", "natsmesh.bench._traffic", url, str(slow), loop], stderr=-3
    )
    assert proc.stdout is not None
    line = await anext(anyio.streams.text.TextReceiveStream(proc.stdout), "")
    if not line.startswith("ready"):
        proc.kill()
        await proc.wait()
        raise BenchError(f"the instances did not start: {line.strip()!r}")
    return proc


async def _load(mesh: Mesh, *, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        while True:  # at least one call, however short the run
            started = time.perf_counter()
            await mesh.call("tail.work")
            latencies.append(time.perf_counter() - started)
            if time.monotonic() >= stop_at:
                break

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return sorted(latencies)


def _summary(latencies: list[float]) -> dict[str, float]:
    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    return {"calls": len(latencies), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


async def _run_mode(
    url: str, controller: Controller, routes: str, *, concurrency: int, seconds: float
) -> dict[str, float]:
    reply = await controller.apply(routes.encode(), allow_empty=True)
    if not reply.ok:
        raise RuntimeError(f"route config refused: {reply}")
    async with Mesh(url, name="bench-traffic") as mesh:
        await _load(mesh, concurrency=concurrency, seconds=min(1.0, seconds))  # learn, warm
        return _summary(await _load(mesh, concurrency=concurrency, seconds=seconds))


async def run(
    url: str, *, concurrency: int = 16, seconds: float = 4.0, loop: str = "auto"
) -> dict[str, Any]:
    """Healthy, then each mode with one slow instance; the instances' process runs on ``loop``."""
    results: dict[str, Any] = {"concurrency": concurrency, "slow_factor": 10}
    async with Controller(url, lease=1.0) as controller:
        with anyio.fail_after(15):
            while not controller.is_leader:
                await controller.leader_changed.wait()
        for slow, modes in ((0, {"healthy": MODES["p2c"]}), (1, MODES)):
            proc = await _instances(url, slow, loop)
            try:
                with anyio.fail_after(15):  # all four instances in the registry
                    while len(controller.registry.table("tail").instances) < 4:  # noqa: ASYNC110  (the registry has no change event)
                        await anyio.sleep(0.05)
                for mode, routes in modes.items():
                    results[mode] = await _run_mode(
                        url, controller, routes, concurrency=concurrency, seconds=seconds
                    )
            finally:
                proc.terminate()
                await proc.wait()
            with anyio.fail_after(15):  # gone before the next fleet starts
                while controller.registry.table("tail").instances:  # noqa: ASYNC110  (as above)
                    await anyio.sleep(0.05)
    healthy = results["healthy"]["p99_ms"]
    results["ratio_to_healthy_p99"] = {m: results[m]["p99_ms"] / healthy for m in MODES}
    return results


def format_result(result: dict[str, Any]) -> str:
    lines = [f"{'':14} {'calls':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/healthy':>12}"]
    for mode in ("healthy", *MODES):
        figures = result[mode]
        ratio = result["ratio_to_healthy_p99"].get(mode, 1.0)
        lines.append(
            f"{mode:14} {figures['calls']:>7.0f} {figures['p50_ms']:>8.2f} "
            f"{figures['p99_ms']:>8.2f} {ratio:>12.2f}"
        )
    return "\n".join(lines)


async def _serve_instances(url: str, slow: int) -> None:
    targets = [Tail(FAST * 10) for _ in range(slow)] + [Tail() for _ in range(4 - slow)]

    def ready(runners: list[ServiceRunner]) -> None:
        print("ready", flush=True)

    await serve(targets, nats=url, ready=ready)


if __name__ == "__main__":
    # The child side of run(): natsmesh.bench._traffic URL SLOW_COUNT LOOP
    from natsmesh.ops._loop import backend_options

    anyio.run(
        _serve_instances,
        sys.argv[1],
        int(sys.argv[2]),
        backend_options=backend_options(sys.argv[3]),
    )
