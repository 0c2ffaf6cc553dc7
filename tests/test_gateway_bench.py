"""``natsmesh bench gateway``: wrk's output read right, the built-in load against real and
misbehaving servers, and a tiny run of the whole bench."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from natsmesh.bench import _gateway as _bench_gateway
from natsmesh.bench._env import BenchError
from natsmesh.bench._load import builtin, parse_wrk, summary

pytestmark = pytest.mark.anyio

WRK = """Running 3s test @ http://127.0.0.1:40000/bench/echo
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.61ms    1.19ms  23.81ms   88.64%
    Req/Sec    13.92k     1.04k   15.48k    70.00%
  Latency Distribution
     50%    4.40ms
     75%    4.93ms
     90%    5.72ms
     99%    1.20s
  41557 requests in 3.00s, 6.11MB read
  Socket errors: connect 0, read 0, write 0, timeout 3
  Non-2xx or 3xx responses: 2
Requests/sec:  13846.45
Transfer/sec:      2.04MB
"""


def test_wrk_output_is_read() -> None:
    figures = parse_wrk(WRK)
    assert figures == {
        "rps": 13846.45,
        "mean_ms": 4.61,
        "p50_ms": 4.4,
        "p99_ms": 1200.0,
        "errors": 5.0,
    }
    assert parse_wrk(WRK.replace("50%    4.40ms", "50%  850.00us"))["p50_ms"] == 0.85
    with pytest.raises(ValueError, match="unreadable"):
        parse_wrk("wrk: connection refused")


def test_a_run_without_figures_is_a_bench_error() -> None:
    with pytest.raises(BenchError, match="no request completed"):
        summary([], 1.0)
    assert summary([0.001, 0.003], 2.0)["mean_ms"] == pytest.approx(2.0)


# -- the built-in load against servers that misbehave --------------------------------------


@asynccontextmanager
async def tcp_server(answer: bytes | None) -> AsyncIterator[str]:
    """A server that answers every request with ``answer``, or closes (``None``)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    await stream.receive()
                    if answer is None:
                        return
                    await stream.send(answer)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610  (anyio, not Django)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


def _answer(status: bytes, body: bytes = b"{}") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)


async def test_the_builtin_load_counts_answers_that_are_not_2xx() -> None:
    async with tcp_server(_answer(b"503 Service Unavailable")) as url:
        figures = await builtin(url, "/x", b"{}", concurrency=2, seconds=0.05)
    assert figures["rps"] > 0
    assert figures["errors"] > 0


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        (None, "closed a connection"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", "without content-length"),
    ],
)
async def test_a_server_that_misbehaves_is_a_bench_error(answer: bytes | None, needle: str) -> None:
    async with tcp_server(answer) as url:
        with pytest.raises(BenchError, match=needle):
            await builtin(url, "/x", b"{}", concurrency=2, seconds=0.05)


async def test_no_server_is_a_bench_error() -> None:
    from natsmesh.testing import free_port

    with pytest.raises(BenchError, match="cannot load"):
        await builtin(f"http://127.0.0.1:{free_port()}", "/x", b"{}", concurrency=1, seconds=0.05)


# -- the whole bench -------------------------------------------------------------------------


async def test_a_tiny_run_with_the_builtin_load(nats_url: str) -> None:
    result = await _bench_gateway.run(
        nats_url, concurrency=4, seconds=0.01, rounds=1, load="builtin", warmup=0.01
    )
    assert result["load"] == "builtin"
    for kind in _bench_gateway.KINDS:
        assert result[kind]["rps"] > 0, kind
        assert result[kind]["errors"] == 0, kind
    for kind in _bench_gateway.KEEP_ALIVE_KINDS:
        assert result["keep_alive"][kind]["mean_ms"] > 0
    assert set(result["ratio"]) == {"gateway", "gateway-w2"}
    assert result["keep_alive"]["ratio"]["gateway"]["mean"] > 0
    text = _bench_gateway.format_result(result)
    assert "gateway/bridge: throughput" in text
    assert "one keep-alive connection: mean latency" in text
