"""``natsmesh bench observe``: Mesh.call with metrics on (and observed) against off, in one run.

The data bench's echo service runs in a child process. This process holds two
Mesh clients on one connection: ``off`` (``metrics=False``: no meter, no
reporter) and ``on`` (the default), whose summaries an observer asks for every
:data:`REPORT_EVERY` seconds throughout, as the dashboard does. Rounds alternate
which goes first; each on/off ratio is the median of the rounds' own ratios, so
a neighbour's burst spoils one round's pair, not the figure. The bar: throughput
on/off >= 0.97.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict
from typing import Any

import anyio
import anyio.streams.text

from natsmesh.bench._data import SAMPLE, Item, _figures, _measure
from natsmesh.bench._env import BenchError
from natsmesh.client._client import Mesh
from natsmesh.transport._transport import NATS, connect
from natsmesh.wire import _observe

BAR = 0.97
MODES = ("off", "on")


async def run(
    url: str,
    *,
    concurrencies: tuple[int, ...] = (1, 64),
    seconds: float = 5.0,
    rounds: int = 40,
    loop: str = "auto",
) -> dict[str, Any]:
    """Both modes against one service process; returns the figures as a dict."""
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
            await child.stdin.aclose()
            with anyio.move_on_after(10) as scope:
                await child.wait()
            if scope.cancelled_caught:
                child.kill()


async def _ask(nc: NATS, reports: list[int]) -> None:
    """An observer's side: interest on the beat, summaries counted."""

    async def count(msg: Any) -> None:
        reports[0] += 1

    sub = await nc.subscribe(_observe.metrics_wildcard("mesh"), cb=count)
    try:
        while True:
            await nc.publish(_observe.metrics_interest("mesh"), b"")
            await anyio.sleep(_observe.REPORT_EVERY)
    finally:
        with anyio.CancelScope(shield=True):
            await sub.unsubscribe()


async def _compare(
    nc: NATS, concurrencies: tuple[int, ...], seconds: float, rounds: int
) -> dict[str, Any]:
    results: dict[str, Any] = {mode: [] for mode in MODES}
    results["ratio"] = []
    reports = [0]
    async with (
        Mesh(nc, name="bench-off", metrics=False) as off,
        Mesh(nc, name="bench-on") as on,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(_ask, nc, reports)

        async def call_off() -> Item:
            return await off.call("bench.echo", SAMPLE, response=Item, timeout=5)

        async def call_on() -> Item:
            return await on.call("bench.echo", SAMPLE, response=Item, timeout=5)

        calls = {"off": call_off, "on": call_on}
        for warm in calls.values():
            await _measure(warm, 16, 0.3)
        for c in concurrencies:
            runs: dict[str, list[tuple[int, float, list[float]]]] = {m: [] for m in MODES}
            for i in range(rounds):
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    runs[mode].append(await _measure(calls[mode], c, seconds / rounds))
            for mode in MODES:
                results[mode].append(asdict(_figures(c, runs[mode])))
            ratios = [
                _figures(c, [b]).rps / _figures(c, [a]).rps
                for a, b in zip(runs["off"], runs["on"], strict=True)
            ]
            results["ratio"].append(
                {"concurrency": c, "throughput": statistics.median(ratios), "rounds": ratios}
            )
        tg.cancel_scope.cancel()
    results["summaries"] = reports[0]
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "off: Mesh(metrics=False); on: the default, its summaries asked for every"
        f" {_observe.REPORT_EVERY:g} s",
        f"{'':6} {'conc':>5} {'calls':>8} {'rps':>10} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for mode in MODES:
        for f in results[mode]:
            lines.append(
                f"{mode:6} {f['concurrency']:>5} {f['calls']:>8} {f['rps']:>10.0f}"
                f" {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f}"
            )
    for r in results["ratio"]:
        lines.append(
            f"on/off {r['concurrency']:>3}: throughput {r['throughput']:.3f} (bar >= {BAR})"
        )
    lines.append(f"summaries published while on: {results['summaries']}")
    return "\n".join(lines)
