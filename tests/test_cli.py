"""The natsmesh command line, run as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import anyio
import anyio.to_thread
import pytest
from procs import TESTS, Proc
from services import Echo

from natsmesh import ServiceRunner

pytestmark = pytest.mark.anyio


def natsmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsmesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})},
    )


async def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(lambda: natsmesh(*args, env=env))


async def test_call_prints_the_reply_as_json(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        done = await run("call", "echo.echo", '{"id": 1, "name": "a"}', "--nats", nats_url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"id": 1, "name": "a"}
        # NATS_URL is honoured when --nats is absent
        done = await run("call", "echo.whoami", env={"NATS_URL": nats_url})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["caller"] == "natsmesh-cli"
        done = await run("call", "echo.slow", "{}", "-H", "x-instance=abc", "--nats", nats_url)
        assert json.loads(done.stdout)["instance"] == "abc"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["call", "nobody.here"], 3, "no responders"),
        (["call", "echo.echo", '{"id": "x"}'], 5, "422"),
        (["call", "echo.echo", "{not json"], 1, "not valid JSON"),
        (["call", "echo.slow", '{"seconds": 5}', "--timeout", "0.3"], 4, "deadline"),
        (["call", "echo.nothing", "{}"], 5, "404"),
        (["call", "ec*ho.echo"], 1, "invalid service name"),
        (["call", "echo.echo", "{}", "-H", "bad header=1"], 1, "invalid header name"),
        (["call", "echo.echo", "{}", "-H", "noequals"], 1, "KEY=VALUE"),
        (["call", "echo.echo", "{}", "-H", "Mesh-Budget-Ms=99999"], 1, "set by the mesh"),
        (["call", "echo.echo", "--timeout", "-1"], 2, "invalid"),
        (["info", "bad.name"], 2, "invalid"),
        (["serve", "nocolon"], 1, "MODULE:ATTR"),
        (["serve", "no_such_module_xyz:Svc"], 1, "cannot import"),
        (["serve", "services:Item"], 1, "not a @service"),
        (["serve", "services:Echo", "--instances", "0"], 2, "invalid"),
    ],
)
async def test_failures_are_one_line_and_a_nonzero_exit(
    nats_url: str, args: list[str], code: int, needle: str
) -> None:
    async with ServiceRunner(Echo, nats=nats_url):
        done = await run(*args, "--nats", nats_url)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert needle in done.stderr
    if code != 2:  # argparse prints its usage; everything else is one line
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


async def test_ls_info_stats(nats_url: str) -> None:
    async with ServiceRunner(Echo, nats=nats_url) as runner:
        await run("call", "echo.echo", '{"id": 2, "name": "b"}', "--nats", nats_url)
        ls = await run("ls", "--nats", nats_url)
        assert runner.id in ls.stdout
        assert "natsmesh" in ls.stdout
        info: list[dict[str, Any]] = json.loads(
            (await run("info", "echo", "--json", "--nats", nats_url)).stdout
        )
        assert info[0]["endpoints"][0]["metadata"]["natsmesh.idempotent"] in {"true", "false"}
        stats = json.loads((await run("stats", "echo", "--json", "--nats", nats_url)).stdout)
        echo = next(e for e in stats[0]["endpoints"] if e["name"] == "echo")
        assert echo["num_requests"] == 1
        table = await run("stats", "echo", "--nats", nats_url)
        assert "REQUESTS" in table.stdout
        assert "in (0 ejections)" in table.stdout  # in its queue group
    missing = await run("info", "ghost", "--nats", nats_url)
    assert missing.returncode == 3
    empty = await run("ls", "--json", "--nats", nats_url)
    assert json.loads(empty.stdout) == []


async def test_nats_command_runs_a_server_in_the_foreground() -> None:
    with Proc("nats", "--port", "0", nats_url="") as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready)
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("nats://127.0.0.1:")
        async with ServiceRunner(Echo, nats=url):
            done = await run("call", "echo.echo", '{"id": 3, "name": "c"}', "--nats", url)
            assert done.returncode == 0
        proc.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(proc.popen.wait, 20) == 0


async def test_bench_reports_both_sides_and_ratios(nats_url: str) -> None:
    done = await run("bench", "--json", "--seconds", "0.3", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [r["concurrency"] for r in out["ratio"]] == [1, 128]
    for side in ("raw", "mesh", "bare"):
        assert all(f["rps"] > 0 and f["p99_ms"] >= f["p50_ms"] > 0 for f in out[side])


async def test_bench_control_reports_convergence_and_controller_cost(nats_url: str) -> None:
    done = await run(
        "bench", "control", "--json", "--clients", "3", "--applies", "3",
        "--instances", "50", "--seconds", "2.5", "--nats", nats_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    convergence, scale = out["convergence"], out["scale"]
    assert convergence["clients"] == 3
    assert convergence["p99_ms"] >= convergence["p50_ms"] >= 0
    assert scale["registered"] == 50
    assert scale["controller_rss_mib"] > 0


async def test_bench_traffic_compares_balancers_against_the_healthy_p99(nats_url: str) -> None:
    done = await run("bench", "traffic", "--json", "--seconds", "0.5", "--nats", nats_url)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for mode in ("healthy", "queue", "p2c", "p2c+hedging"):
        assert out[mode]["calls"] > 0
        assert out[mode]["p99_ms"] >= out[mode]["p50_ms"] > 0
    assert set(out["ratio_to_healthy_p99"]) == {"queue", "p2c", "p2c+hedging"}


def test_stats_show_an_instance_the_controller_took_out_of_its_queue_group() -> None:
    from natsmesh._cli import _queue

    assert _queue({"queue_ejected": 1, "queue_ejections": 2}) == "out (2 ejections)"
    assert _queue({"queue_ejected": 0, "queue_ejections": 2}) == "in (2 ejections)"
    assert _queue({"dropped_expired": 0}) == ""  # a micro service in another language
    assert _queue(None) == ""
