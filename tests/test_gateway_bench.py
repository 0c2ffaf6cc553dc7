"""``natsmesh bench gateway``: wrk's output read right, and a tiny run of the whole bench."""

from __future__ import annotations

import pytest

from natsmesh import _bench_gateway

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
    figures = _bench_gateway.parse_wrk(WRK)
    assert figures == {"rps": 13846.45, "p50_ms": 4.4, "p99_ms": 1200.0, "errors": 5.0}
    assert _bench_gateway.parse_wrk(WRK.replace("50%    4.40ms", "50%  850.00us"))["p50_ms"] == 0.85
    with pytest.raises(ValueError, match="unreadable"):
        _bench_gateway.parse_wrk("wrk: connection refused")


@pytest.mark.anyio
async def test_a_tiny_run_with_the_builtin_load(nats_url: str) -> None:
    result = await _bench_gateway.run(
        nats_url, concurrency=4, seconds=0.3, rounds=1, load="builtin", warmup=0.2
    )
    assert result["load"] == "builtin"
    for kind in _bench_gateway.KINDS:
        assert result[kind]["rps"] > 0, kind
        assert result[kind]["errors"] == 0, kind
    assert set(result["ratio"]) == {"gateway", "gateway-w2"}
    text = _bench_gateway.format_result(result)
    assert "gateway/bridge: throughput" in text
