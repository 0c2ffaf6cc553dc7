"""``natsmesh bench gateway``: the HTTP gateway against a minimal HTTP-to-NATS bridge.

Child processes, so that the load generator's CPU is not the servers':

- the echo service of ``natsmesh bench`` (``natsmesh.bench._data --serve``);
- ``bridge``: uvicorn (same loop and HTTP parser as the gateway) and one nats-py
  ``request()`` per HTTP request, the JSON body passed through as is: no
  routing, no validation, no metrics;
- ``gateway``: ``natsmesh gateway``, routing, limits, JSON to msgpack and back,
  ``Mesh.call`` and metrics, all on;
- ``gateway-w2``: the same with ``--workers 2``.

Every process runs on the bench's event loop (``--loop``), and uvicorn picks the
same HTTP parser for the bridge and the gateway. The load (:mod:`natsmesh.bench._load`)
is ``wrk`` when it is on PATH, else a keep-alive generator built in. Two phases,
each in rounds that alternate their order (forwards, then backwards) so that
drift on a shared machine hits all alike:
``concurrency`` connections (throughput, p99), then one keep-alive connection
(mean latency: a request at a time, what a lone client waits).

The bars: at ``concurrency`` connections the gateway's throughput at least the
bridge's (one worker and two) and its p99 at most 1.1 of it; on one connection
its mean latency at most 1.3 of the bridge's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import anyio
import anyio.abc
import anyio.streams.text

from natsmesh.bench._data import SAMPLE
from natsmesh.bench._env import BenchError
from natsmesh.bench._load import Figures, builtin, combine, median, wrk
from natsmesh.ops._binary import free_port
from natsmesh.transport._transport import NATS, connect

PATH: Final = "/bench/echo"
SUBJECT: Final = "mesh.bench.echo"
BODY: Final = SAMPLE.model_dump_json().encode()
KINDS: Final = ("bridge", "gateway", "gateway-w2")
KEEP_ALIVE_KINDS: Final = ("bridge", "gateway")  # one connection reaches one worker
BARS: Final = {"throughput": 1.0, "p99": 1.1, "keep_alive_mean": 1.3}


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


def _run_bridge(url: str, port: int, loop: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        Bridge(url),
        host="127.0.0.1",
        port=port,
        loop=loop,
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
async def _child(args: Sequence[str], ready: str) -> AsyncIterator[anyio.abc.Process]:
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
            raise BenchError(f"{' '.join(args)}: did not start: {line.strip()!r}")
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


# -- the run -----------------------------------------------------------------------------


def _commands(nats: str, ports: dict[str, int], loop: str) -> dict[str, tuple[list[str], str]]:
    gateway = ["-m", "natsmesh", "gateway", "--nats", nats, "--loop", loop, "--port"]
    return {
        "echo": (["-m", "natsmesh.bench._data", "--serve", nats, loop], "ready"),
        "bridge": (
            ["-m", "natsmesh.bench._gateway", "--bridge", nats, str(ports["bridge"]), loop],
            "bridge:",
        ),
        "gateway": ([*gateway, str(ports["gateway"])], "natsmesh gateway:"),
        "gateway-w2": ([*gateway, str(ports["gateway-w2"]), "--workers", "2"], "natsmesh gateway:"),
    }


Load = Callable[[str, int, float], Awaitable[Figures]]


async def _rounds(
    load: Load, kinds: Sequence[str], *, concurrency: int, seconds: float, rounds: int
) -> dict[str, list[Figures]]:
    runs: dict[str, list[Figures]] = {kind: [] for kind in kinds}
    for i in range(rounds):
        # Forwards, then backwards: each kind runs as often early in a round as late,
        # and the gateway always next to the bridge it is compared with.
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            runs[kind].append(await load(kind, concurrency, seconds / rounds))
    return runs


def _ratio(runs: dict[str, list[Figures]], kind: str, figure: str) -> float:
    # Per round, then the median: a round's neighbours ran under the same conditions.
    pairs = zip(runs[kind], runs["bridge"], strict=True)
    return median([r[figure] / b[figure] for r, b in pairs])


async def run(
    nats: str,
    *,
    concurrency: int = 64,
    seconds: float = 20.0,
    rounds: int = 20,
    load: Literal["auto", "wrk", "builtin"] = "auto",
    warmup: float = 1.0,
    loop: str = "auto",
) -> dict[str, Any]:
    """Measure every kind for ``seconds`` (in ``rounds`` alternating slices); figures as a dict.

    Then the keep-alive phase: one connection, ``seconds / 2`` per kind. ``load="auto"``
    uses wrk when it is on PATH, else the built-in generator. Raises BenchError when
    a process does not start or a target stops answering.
    """
    path = shutil.which("wrk") if load != "builtin" else None
    if load == "wrk" and path is None:
        raise BenchError("wrk is not on PATH (Debian: apt-get install wrk)")
    ports = {kind: free_port() for kind in KINDS}
    commands = _commands(nats, ports, loop)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        script.flush()

        async def generate(kind: str, connections: int, secs: float) -> Figures:
            url = f"http://127.0.0.1:{ports[kind]}"
            if path is not None:
                return await wrk(
                    url, PATH, concurrency=connections, seconds=secs, script=script.name
                )
            return await builtin(url, PATH, BODY, concurrency=connections, seconds=secs)

        async with (
            _child(*commands["echo"]),
            _child(*commands["bridge"]),
            _child(*commands["gateway"]),
            _child(*commands["gateway-w2"]),
        ):
            for kind in KINDS:  # warm up: connections, caches, the gateway's directory
                await generate(kind, concurrency, warmup)
            many = await _rounds(
                generate, KINDS, concurrency=concurrency, seconds=seconds, rounds=rounds
            )
            one = await _rounds(
                generate, KEEP_ALIVE_KINDS, concurrency=1, seconds=seconds / 2, rounds=rounds
            )
    return _result(
        many,
        one,
        load="wrk" if path else "builtin",
        concurrency=concurrency,
        seconds=seconds,
        rounds=rounds,
    )


def _result(
    many: dict[str, list[Figures]],
    one: dict[str, list[Figures]],
    *,
    load: str,
    concurrency: int,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """The figures of both phases, each kind's combined, and the ratios to the bridge."""
    return {
        "load": load,
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        **{kind: combine(many[kind]) for kind in KINDS},
        "ratio": {
            kind: {"throughput": _ratio(many, kind, "rps"), "p99": _ratio(many, kind, "p99_ms")}
            for kind in KINDS[1:]
        },
        "keep_alive": {
            **{kind: combine(one[kind]) for kind in KEEP_ALIVE_KINDS},
            "ratio": {"gateway": {"mean": _ratio(one, "gateway", "mean_ms")}},
        },
    }


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"load: {result['load']}, {result['concurrency']} connections, "
        f"{result['seconds']:g} s per target in {result['rounds']} alternating rounds "
        "(ratios: the median of the rounds')",
        "bridge: uvicorn + nc.request(), nothing else; gateway: natsmesh gateway, 1 worker;"
        " gateway-w2: --workers 2",
        f"{'':11} {'rps':>9} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    rows = [(kind, result[kind]) for kind in KINDS]
    rows += [(f"{kind} x1", result["keep_alive"][kind]) for kind in KEEP_ALIVE_KINDS]
    for name, f in rows:
        lines.append(
            f"{name:11} {f['rps']:>9.0f} {f['mean_ms']:>8.2f} {f['p50_ms']:>8.2f} "
            f"{f['p99_ms']:>8.2f} {f['errors']:>7.0f}"
        )
    for kind, ratio in result["ratio"].items():
        p99 = f", p99 {ratio['p99']:.2f} (bar <= {BARS['p99']:.2f})" if kind == "gateway" else ""
        lines.append(
            f"{kind}/bridge: throughput {ratio['throughput']:.2f} "
            f"(bar >= {BARS['throughput']:.2f}){p99}"
        )
    mean = result["keep_alive"]["ratio"]["gateway"]["mean"]
    lines.append(
        f"gateway/bridge, one keep-alive connection: mean latency {mean:.2f} "
        f"(bar <= {BARS['keep_alive_mean']:.2f})"
    )
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 4 and argv[0] == "--bridge":
        _run_bridge(argv[1], int(argv[2]), argv[3])
        return
    raise SystemExit("usage: python -m natsmesh.bench._gateway --bridge NATS_URL PORT LOOP")


if __name__ == "__main__":
    _main(sys.argv[1:])
