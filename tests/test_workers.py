"""``natsmesh serve --workers N``: real worker processes, killed, drained and crash-looping.

Every process a test starts is stopped by its pid: the supervisor through Proc,
and its workers (named in its ready line or their replies) by ``stop_all``.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from procs import Proc
from waits import eventually

from natsmesh import Mesh, Retries, ServicePolicy
from natsmesh.client._client import link_of
from natsmesh.client._discovery import gather
from natsmesh.wire import _micro

pytestmark = pytest.mark.anyio

_WORKER = re.compile(r"worker (\d+) pid (\d+): ")


def worker_pids(ready_line: str) -> dict[int, int]:
    """``{worker index: pid}`` from the supervisor's ready line."""
    return {int(i): int(pid) for i, pid in _WORKER.findall(ready_line)}


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@contextmanager
def stop_all(pids: set[int]) -> Iterator[set[int]]:
    """On the way out, SIGKILL any of ``pids`` (grown by the test) still running."""
    try:
        yield pids
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def instances(url: str, service: str) -> int:
    async with Mesh(url, tables=False) as mesh:
        return len(await mesh.services(service, timeout=0.5))


async def in_flight(url: str, service: str) -> int:
    async with Mesh(url, tables=False) as mesh:
        stats = await gather(link_of(mesh), "STATS", _micro.Stats, name=service, timeout=0.5)
    # Each instance reports its requests in flight with every endpoint.
    return sum(
        max((int((e.data or {}).get("in_flight", 0)) for e in s.endpoints), default=0)
        for s in stats
    )


async def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(
    nats_url: str,
) -> None:
    with (
        Proc("serve", "services:Echo", "--workers", "2", nats_url=nats_url) as proc,
        stop_all(set()) as pids,
    ):
        line = await anyio.to_thread.run_sync(proc.wait_ready)
        assert line.startswith("natsmesh serve: 2 workers | ")
        workers = worker_pids(line)
        pids.update(workers.values())
        assert sorted(workers) == [1, 2]
        assert proc.pid not in pids  # each worker is a process of its own
        assert await instances(nats_url, "echo") == 2

        async with Mesh(nats_url, tables=False) as mesh:
            answered = {(await mesh.call("echo.slow", {}))["pid"] for _ in range(40)}
            assert answered == set(workers.values())  # both take their share

            os.kill(workers[1], signal.SIGKILL)
            # A request sent before the server saw the connection close is lost with the
            # process. The supervisor reaps it, then the service answers every call while
            # worker 1 is replaced.
            killed = f"worker 1 (pid {workers[1]}) was killed by SIGKILL"
            await proc.says(killed)
            for _ in range(20):
                pid = (await mesh.call("echo.slow", {}, timeout=5))["pid"]
                pids.add(pid)
                assert pid != workers[1]

            async def replaced() -> int:
                pid = int((await mesh.call("echo.slow", {}))["pid"])
                pids.add(pid)
                return pid not in workers.values()

            await eventually(replaced, within=30)
        await proc.says("worker 1 is back")
        assert alive(workers[2])  # untouched

        assert await anyio.to_thread.run_sync(proc.terminate) == 0
        await eventually(lambda: not any(alive(pid) for pid in pids))


async def test_sigterm_drains_every_worker_then_exits_0(nats_url: str) -> None:
    calls = 16  # on 2 workers at random: all on one, 1 time in 2**15
    with (
        Proc("serve", "services:Echo", "--workers", "2", nats_url=nats_url) as proc,
        stop_all(set()) as pids,
    ):
        pids.update(worker_pids(await anyio.to_thread.run_sync(proc.wait_ready)).values())
        # One try per call: each request is answered by the worker that took it, or not at all.
        once = ServicePolicy(retries=Retries(attempts=1))
        async with Mesh(nats_url, tables=False, policy=once) as mesh:
            served: list[int] = []

            async def slow() -> None:
                served.append((await mesh.call("echo.slow", {"seconds": 3}, timeout=30))["pid"])

            async with anyio.create_task_group() as tg:
                for _ in range(calls):
                    tg.start_soon(slow)
                await eventually(lambda: _is(in_flight(nats_url, "echo"), calls), within=15)
                proc.signal(signal.SIGTERM)
            assert len(served) == calls  # every request in flight was answered
            assert set(served) == pids  # ...by both workers
        assert await anyio.to_thread.run_sync(proc.popen.wait, 60) == 0
        await eventually(lambda: not any(alive(pid) for pid in pids))
        assert "Traceback" not in "".join(proc.stderr_lines)


async def _is(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def test_a_worker_in_a_crash_loop_is_restarted_ever_more_slowly(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "crash"
    monkeypatch.setenv("CRASHY_FLAG", str(flag))
    with (
        Proc("serve", "services:Crashy", "--workers", "2", nats_url=nats_url) as proc,
        stop_all(set()) as pids,
    ):
        workers = worker_pids(await anyio.to_thread.run_sync(proc.wait_ready))
        pids.update(workers.values())
        flag.touch()  # from now on a starting worker exits 3 at once
        os.kill(workers[1], signal.SIGKILL)

        def delays() -> list[float]:
            found = re.findall(r"worker 1 \(pid \d+\) .*?; starting another in ([\d.]+) s",
                               "".join(proc.stderr_lines))  # fmt: skip
            return [float(d) for d in found]

        await proc.says("; starting another in", 4, within=30)
        assert delays()[:4] == [0.5, 1.0, 2.0, 4.0]  # backing off, not spinning
        assert "exited with code 3" in "".join(proc.stderr_lines)

        flag.unlink()  # the next start succeeds
        await proc.says("worker 1 is back", within=30)
        await eventually(lambda: _is(instances(nats_url, "crashy"), 2), within=15)
        async with Mesh(nats_url, tables=False) as mesh:
            for _ in range(10):
                pids.add(await mesh.call("crashy.pid"))
        assert await anyio.to_thread.run_sync(proc.terminate) == 0


async def test_a_worker_that_cannot_start_stops_the_command(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "crash"
    flag.touch()
    monkeypatch.setenv("CRASHY_FLAG", str(flag))
    with Proc("serve", "services:Crashy", "--workers", "2", nats_url=nats_url) as proc:
        code = await anyio.to_thread.run_sync(proc.popen.wait, 60)
    assert code == 1
    assert "before it was ready" in "".join(proc.stderr_lines)
    assert "exited with code 3" in "".join(proc.stderr_lines)


async def test_workers_die_with_a_killed_supervisor(nats_url: str) -> None:
    with (
        Proc("serve", "services:Echo", "--workers", "2", nats_url=nats_url) as proc,
        stop_all(set()) as pids,
    ):
        pids.update(worker_pids(await anyio.to_thread.run_sync(proc.wait_ready)).values())
        proc.signal(signal.SIGKILL)
        await eventually(lambda: not any(alive(pid) for pid in pids), within=60)
        await eventually(lambda: _is(instances(nats_url, "echo"), 0), within=30)
