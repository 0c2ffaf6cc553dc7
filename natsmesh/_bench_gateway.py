"""``natsmesh bench gateway``: the HTTP gateway against a minimal HTTP-to-NATS bridge.

Child processes, so that the load generator's CPU is not the servers':

- the echo service of ``natsmesh bench`` (``natsmesh._bench --serve``);
- ``bridge``: uvicorn (same loop and HTTP parser as the gateway) and one nats-py
  ``request()`` per HTTP request, the JSON body passed through as is: no
  routing, no validation, no metrics;
- ``gateway``: ``natsmesh gateway``, routing, limits, JSON to msgpack and back,
  ``Mesh.call`` and metrics, all on;
- ``gateway-w2``: the same with ``--workers 2``.

The load is ``wrk`` when it is on PATH (its ``--latency`` distribution), else a
small keep-alive HTTP/1.1 generator built in here. Every target gets the same
concurrency in alternating rounds, so drift on a shared machine hits all alike.
The bar: the gateway's throughput at least 0.8 of the bridge's, its p99 at most 1.3 of it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import anyio
import anyio.abc
import anyio.streams.text

from natsmesh._bench import SAMPLE
from natsmesh._embedded import free_port
from natsmesh._transport import NATS, connect

PATH: Final = "/bench/echo"
SUBJECT: Final = "mesh.bench.echo"
BODY: Final = SAMPLE.model_dump_json().encode()
KINDS: Final = ("bridge", "gateway", "gateway-w2")
_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


# -- the bridge: the least code that turns HTTP into one NATS request -----------------------


class Bridge:
    """ASGI: read the body, ``nc.request()`` it, answer the reply. Nothing else."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._nc: NATS | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._nc = await connect(self._url, name="bench-bridge")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self._nc is not None:
                        await self._nc.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self._nc is not None
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        reply = await self._nc.request(
            SUBJECT, body, timeout=5, headers={"Content-Type": "application/json"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(reply.data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.data})


def _run_bridge(url: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        Bridge(url),
        host="127.0.0.1",
        port=port,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_config=None,
        log_level="warning",
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            print(f"bridge: http://127.0.0.1:{port}", flush=True)

    Server(config).run()


# -- child processes ----------------------------------------------------------------------


@asynccontextmanager
async def _child(args: Sequence[str], *, ready: str) -> AsyncIterator[anyio.abc.Process]:
    """A child whose first stdout line starting with ``ready`` says it serves."""
    process = await anyio.open_process(
        [sys.executable, *args], stdin=-1, stderr=None, env={**os.environ}
    )
    try:
        assert process.stdout is not None
        lines = anyio.streams.text.TextReceiveStream(process.stdout)
        with anyio.fail_after(60):
            line = ""
            async for chunk in lines:
                line += chunk
                if "\n" in line:
                    break
        if not line.startswith(ready):
            raise RuntimeError(f"{' '.join(args)}: not ready: {line!r}")
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(15) as scope:
                await process.wait()
            if scope.cancelled_caught:
                process.kill()
                await process.wait()
        await process.aclose()


# -- load --------------------------------------------------------------------------------


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests per second, p50 and p99 (ms) and non-2xx answers from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if rps is None or p50 is None or p99 is None:
        raise ValueError(f"unreadable wrk output: {output[-500:]!r}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*?timeout (\d+)", output)
    return {
        "rps": float(rps[1]),
        "p50_ms": _wrk_ms(p50[1]),
        "p99_ms": _wrk_ms(p99[1]),
        "errors": float((int(bad[1]) if bad else 0) + (int(errors[1]) if errors else 0)),
    }


async def _wrk(url: str, concurrency: int, seconds: float, script: str) -> dict[str, float]:
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        script,
        url + PATH,
    ]
    done = await anyio.run_process(command, check=True)
    return parse_wrk(done.stdout.decode())


async def _builtin(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    """Keep-alive connections, each sending the next request when its answer is in."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head.lower())[1])  # type: ignore[index]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(connection)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": float(errors),
    }


# -- the run -----------------------------------------------------------------------------


async def run(
    nats: str,
    *,
    concurrency: int = 64,
    seconds: float = 10.0,
    rounds: int = 5,
    load: Literal["auto", "wrk", "builtin"] = "auto",
    warmup: float = 1.0,
) -> dict[str, Any]:
    """Measure every kind for ``seconds`` (in ``rounds`` alternating slices); figures as a dict.

    ``load="auto"`` uses wrk when it is on PATH, else the built-in generator.
    """
    wrk = shutil.which("wrk") if load != "builtin" else None
    if load == "wrk" and wrk is None:
        raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
    ports = {kind: free_port() for kind in KINDS}
    gateway = ["-m", "natsmesh", "gateway", "--nats", nats, "--port"]
    commands: dict[str, tuple[list[str], str]] = {
        "bridge": (
            ["-m", "natsmesh._bench_gateway", "--bridge", nats, str(ports["bridge"])],
            "bridge:",
        ),
        "gateway": ([*gateway, str(ports["gateway"])], "natsmesh gateway:"),
        "gateway-w2": ([*gateway, str(ports["gateway-w2"]), "--workers", "2"], "natsmesh gateway:"),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        script.flush()

        async def generate(kind: str, secs: float) -> dict[str, float]:
            url = f"http://127.0.0.1:{ports[kind]}"
            if wrk is not None:
                return await _wrk(url, concurrency, secs, script.name)
            return await _builtin(url, concurrency, secs)

        async with (
            _child(["-m", "natsmesh._bench", "--serve", nats], ready="ready"),
            _child(commands["bridge"][0], ready=commands["bridge"][1]),
            _child(commands["gateway"][0], ready=commands["gateway"][1]),
            _child(commands["gateway-w2"][0], ready=commands["gateway-w2"][1]),
        ):
            for kind in KINDS:  # warm up: connections, caches, the gateway's directory
                await generate(kind, warmup)
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
            for _ in range(rounds):
                for kind in KINDS:
                    runs[kind].append(await generate(kind, seconds / rounds))
    figures = {kind: _combine(runs[kind]) for kind in KINDS}
    return {
        "load": "wrk" if wrk else "builtin",
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        **figures,
        # Per round, then the median: a round's neighbours ran under the same conditions.
        "ratio": {
            kind: {
                "throughput": _median(
                    [r["rps"] / b["rps"] for r, b in zip(runs[kind], runs["bridge"], strict=True)]
                ),
                "p99": _median(
                    [
                        r["p99_ms"] / b["p99_ms"]
                        for r, b in zip(runs[kind], runs["bridge"], strict=True)
                    ]
                ),
            }
            for kind in KINDS[1:]
        },
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _combine(runs: list[dict[str, float]]) -> dict[str, float]:
    # Throughput: the mean rate; percentiles: the median of the rounds' (wrk gives no raw data).
    return {
        "rps": sum(r["rps"] for r in runs) / len(runs),
        "p50_ms": _median([r["p50_ms"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
    }


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"load: {result['load']}, {result['concurrency']} connections, "
        f"{result['seconds']:.0f} s per target in {result['rounds']} alternating rounds "
        "(ratios: the median of the rounds')",
        f"{'':11} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for kind in KINDS:
        f = result[kind]
        rps, p50, p99, errors = f["rps"], f["p50_ms"], f["p99_ms"], f["errors"]
        lines.append(f"{kind:11} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {errors:>7.0f}")
    for kind, ratio in result["ratio"].items():
        lines.append(
            f"{kind}/bridge: throughput {ratio['throughput']:.2f} (bar >= 0.80), "
            f"p99 {ratio['p99']:.2f} (bar <= 1.30)"
        )
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 3 and argv[0] == "--bridge":
        _run_bridge(argv[1], int(argv[2]))
        return
    raise SystemExit("usage: python -m natsmesh._bench_gateway --bridge NATS_URL PORT")


if __name__ == "__main__":
    _main(sys.argv[1:])
