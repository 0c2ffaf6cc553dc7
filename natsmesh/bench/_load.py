"""HTTP load for ``natsmesh bench gateway``: wrk where it is on PATH, else a generator here.

Both keep every connection alive and send its next request when the answer to
the last is in (a closed loop), and both report requests per second, mean, p50
and p99 latency and the count of failed answers. The built-in generator is an
asyncio protocol per connection with the request bytes made once: it costs a few
microseconds a request, so on a small machine it takes less CPU from the servers
it measures than a stream-based client would.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Final, cast

import anyio

from natsmesh.bench._env import BenchError

Figures = dict[str, float]
_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def post(host: str, path: str, body: bytes) -> bytes:
    """A keep-alive HTTP/1.1 POST of a JSON ``body``."""
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- wrk ---------------------------------------------------------------------------------


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> Figures:
    """Requests per second, mean, p50 and p99 (ms) and failed answers from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    mean = re.search(r"^\s+Latency\s+(\S+)", output, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if rps is None or mean is None or p50 is None or p99 is None:
        raise ValueError(f"unreadable wrk output: {output[-500:]!r}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*?timeout (\d+)", output)
    return {
        "rps": float(rps[1]),
        "mean_ms": _wrk_ms(mean[1]),
        "p50_ms": _wrk_ms(p50[1]),
        "p99_ms": _wrk_ms(p99[1]),
        "errors": float((int(bad[1]) if bad else 0) + (int(errors[1]) if errors else 0)),
    }


async def wrk(url: str, path: str, *, concurrency: int, seconds: float, script: str) -> Figures:
    """``wrk`` with ``script`` (the request) for ``seconds`` (at least 1: wrk counts whole ones)."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency"]
    done = await anyio.run_process([*command, "-s", script, url + path], check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr.decode(errors='replace').strip()[-300:]}")
    return parse_wrk(done.stdout.decode())


# -- built in -------------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read one whole answer, record, send again."""

    def __init__(self, request: bytes, stop_at: float, latencies: list[float]) -> None:
        self._request = request
        self._stop_at = stop_at
        self._latencies = latencies
        self._buffer = b""
        self._sent = 0.0
        self._transport: asyncio.Transport | None = None
        self.errors = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent = time.perf_counter()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].lower()
        match = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if match is None:
            self._fail(BenchError(f"an answer without content-length: {head[:200]!r}"))
            return
        size = end + 4 + int(match[1])
        if len(self._buffer) < size:
            return
        now = time.perf_counter()
        self._latencies.append(now - self._sent)
        if not head.startswith(b"http/1.1 2"):
            self.errors += 1
        self._buffer = self._buffer[size:]
        if now < self._stop_at:
            self._send()
        elif not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        if not self.done.done():
            self.done.cancel()  # nobody waits for it any more
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(BenchError(f"the server closed a connection ({exc})"))


async def builtin(url: str, path: str, body: bytes, *, concurrency: int, seconds: float) -> Figures:
    """``concurrency`` keep-alive connections for ``seconds``; at least one request on each."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = post(host, path, body)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    connections: list[_Connection] = []
    try:
        with anyio.fail_after(seconds + 30):
            for _ in range(concurrency):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(request, stop_at, latencies), host, int(port)
                )
                connections.append(protocol)
            await asyncio.gather(*(c.done for c in connections))
    except OSError as exc:
        raise BenchError(f"cannot load {url}: {exc!r}") from None
    except TimeoutError:
        raise BenchError(f"{url} stopped answering") from None
    finally:
        for c in connections:
            c.close()
    elapsed = time.perf_counter() - started
    return summary(latencies, elapsed, errors=sum(c.errors for c in connections))


def summary(latencies: list[float], elapsed: float, *, errors: int = 0) -> Figures:
    """Rate, mean and percentiles (ms) of one run's latencies (seconds)."""
    if not latencies or elapsed <= 0:
        raise BenchError("no request completed")
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "mean_ms": sum(ordered) / len(ordered) * 1000,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "errors": float(errors),
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def combine(runs: list[Figures]) -> Figures:
    """Rounds into one: the mean rate, the median of the rounds' latencies (wrk gives no raw)."""
    return {
        "rps": sum(r["rps"] for r in runs) / len(runs),
        "mean_ms": median([r["mean_ms"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
    }
