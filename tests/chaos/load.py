"""Bounded load with a record of every call: when it started, how long it took, what came back.

Open loop by default (a fixed rate, as users arrive, whether or not earlier calls
have come back: a stall shows up as failures and latency, not as fewer calls),
closed loop with ``concurrency`` workers for soak and capacity. Every load stops
at its ``limit`` in seconds even if nobody stops it; the calls in flight at once
are bounded.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from natsmesh import Mesh


@dataclass(slots=True)
class Sample:
    start: float  # time.monotonic()
    latency: float  # seconds
    ok: bool
    served: str  # the pid that answered, or the error's name
    shed: bool = False  # refused fast as overloaded (HTTP 503), not a failure of the mesh


class Load:
    """Calls ``target`` through one client; see the module docstring."""

    def __init__(
        self,
        name: str,
        call: Callable[[], Any],
        *,
        rate: float | None = 200.0,
        concurrency: int = 0,
        limit: float = 300.0,
        max_in_flight: int = 2000,
    ) -> None:
        self.name = name
        self._call = call
        self.rate = rate
        self.concurrency = concurrency
        self.limit = limit
        self.max_in_flight = max_in_flight
        self.samples: list[Sample] = []
        self.in_flight = 0
        self.refused = 0  # open loop: calls not started because max_in_flight were out
        self._stop = anyio.Event()
        self._waits: list[tuple[Callable[[], bool], anyio.Event]] = []

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Until :meth:`stop` or ``limit``; returns once every call started has ended."""
        if self.rate is None:
            await self._closed()
        else:
            await self._open()

    def stop(self) -> None:
        self._stop.set()

    async def _one(self) -> None:
        self.in_flight += 1
        started = time.monotonic()
        try:
            outcome = await self._call()
        except Exception as exc:
            outcome = Sample(started, 0.0, False, type(exc).__name__)
        finally:
            self.in_flight -= 1
        outcome.start, outcome.latency = started, time.monotonic() - started
        self._record(outcome)

    async def _open(self) -> None:
        begin = next_at = time.monotonic()
        async with anyio.create_task_group() as tg:
            while not self._stop.is_set() and time.monotonic() - begin < self.limit:
                if self.in_flight >= self.max_in_flight:
                    self.refused += 1
                else:
                    tg.start_soon(self._one)
                assert self.rate is not None  # may change while running (load steps)
                next_at = max(next_at + 1 / self.rate, time.monotonic() - 0.5)
                delay = next_at - time.monotonic()
                if delay > 0:
                    with anyio.move_on_after(delay):
                        await self._stop.wait()

    async def _closed(self) -> None:
        begin = time.monotonic()

        async def worker() -> None:
            while not self._stop.is_set() and time.monotonic() - begin < self.limit:
                await self._one()

        async with anyio.create_task_group() as tg:
            for _ in range(self.concurrency):
                tg.start_soon(worker)

    def _record(self, sample: Sample) -> None:
        self.samples.append(sample)
        for check, event in self._waits:
            if not event.is_set() and check():
                event.set()

    async def until(self, check: Callable[[], bool], *, within: float = 30.0) -> None:
        """Wait until ``check()`` holds, tested as each call comes back."""
        if check():
            return
        event = anyio.Event()
        self._waits.append((check, event))
        with anyio.fail_after(within):
            await event.wait()

    async def calls(self, count: int, *, within: float = 30.0) -> None:
        """Wait for ``count`` more calls to come back."""
        target = len(self.samples) + count
        await self.until(lambda: len(self.samples) >= target, within=within)

    async def served_by(self, pids: set[str], *, since: float, within: float = 30.0) -> None:
        """Wait until every pid in ``pids`` has answered a call started after ``since``."""
        seen: set[str] = set()

        def check() -> bool:
            for s in self.samples[-200:]:
                if s.ok and s.start >= since:
                    seen.add(s.served)
            return pids <= seen

        await self.until(check, within=within)

    def dump(self, path: str) -> None:
        """Every sample, one line each (for looking into a run)."""
        with open(path, "w") as out:
            for s in self.samples:
                out.write(f"{s.start:.4f} {s.latency:.4f} {int(s.ok)} {s.served}\n")

    # -- figures ---------------------------------------------------------------------------

    def window(self, since: float = 0.0, until: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if since <= s.start < until]

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[Sample]:
        return [s for s in self.window(since, until) if not s.ok and not s.shed]

    def longest_gap(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The longest time without a successful reply, between ``since`` and ``until``."""
        ends = sorted(s.start + s.latency for s in self.window(since, until) if s.ok)
        if not ends:
            return until - since if until != float("inf") else float("inf")
        gaps = [b - a for a, b in itertools.pairwise(ends)]
        return max(gaps, default=0.0)


async def settle(loads: Iterable[Load], seconds: float = 2.0, *, within: float = 60.0) -> None:
    """Until every load has had ``seconds`` more of calls (at its rate) come back.

    The targets are taken together, so loads running side by side wait together.
    """
    targets = [
        (load, len(load.samples) + max(20, int((load.rate or 100) * seconds))) for load in loads
    ]
    for load, target in targets:
        await load.until(
            lambda load=load, target=target: len(load.samples) >= target, within=within
        )


def p99(samples: list[Sample]) -> float:
    latencies = sorted(s.latency for s in samples)
    if not latencies:
        return 0.0
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def mesh_call(
    mesh: Mesh, target: str, payload: dict[str, Any], *, timeout: float | None = None
) -> Callable[[], Any]:
    """One ``Mesh.call``: the reply's pid is who served it."""

    async def call() -> Sample:
        reply = await mesh.call(target, payload, timeout=timeout)
        return Sample(0.0, 0.0, True, str(reply["pid"]))

    return call


def http_call(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> Callable[[], Any]:
    """One POST through the gateway: 200 served, 503 shed (fast, retryable), else failed."""

    async def call() -> Sample:
        r = await client.post(path, json=payload)
        if r.status_code == 200:
            return Sample(0.0, 0.0, True, str(r.json()["pid"]))
        shed = r.status_code == 503 and "retry-after" in r.headers
        return Sample(0.0, 0.0, False, f"HTTP {r.status_code}", shed=shed)

    return call
