"""Ports: one given explicitly that is taken is an error naming it (exit 8); a default
port that is taken moves to a free one, and the ready line says so.

Ports are taken by real listening sockets. The default ports (4222, 8080) are held by
the test while it runs, unless something else on the machine already holds them,
which takes them just as well.
"""

from __future__ import annotations

import contextlib
import errno
import re
import signal
import socket
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest
from procs import Proc
from services import Echo
from test_cli import run

from natsmesh import Mesh, ServiceRunner

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def taken(port: int = 0) -> Iterator[int]:
    """A loopback port with a listener on it; ``port`` 0: any. A default port that
    something else already listens on is taken as it is."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
            yield port  # someone else's: taken all the same
            return
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["up", "--nats-port", "{port}", "--port", "0"], "--nats-port"),
        (["up", "--port", "{port}"], "--port"),
        (["gateway", "--port", "{port}"], "--port"),
        (["gateway", "--port", "{port}", "--workers", "2"], "--port"),
        (["nats", "--port", "{port}"], "--port"),
    ],
    ids=["up --nats-port", "up --port", "gateway --port", "gateway --workers", "nats --port"],
)
async def test_an_explicit_port_that_is_taken_is_an_error_naming_it(
    nats_url: str, args: list[str], flag: str
) -> None:
    with taken() as port:
        argv = [a.format(port=port) for a in args]
        nats = ["--nats", nats_url] if argv[0] == "gateway" else []
        with anyio.fail_after(60):
            done = await run(*argv, *nats)
    assert done.returncode == 8, (done.stdout, done.stderr)
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"port {port} on 127.0.0.1 is taken" in line
    assert flag in line
    assert done.stdout == ""  # nothing started, nothing announced


async def test_a_taken_default_nats_port_moves_and_says_how_to_reach_it() -> None:
    with taken(4222), Proc("up", "--port", "0", nats_url="") as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready, 60)
        found = re.search(r"nats (nats://127\.0\.0\.1:(\d+)) \(port 4222 was taken;", line)
        assert found, line
        url = found[1]
        assert int(found[2]) != 4222
        assert f"export NATS_URL={url})" in line
        async with Mesh(url, tables=False) as mesh:  # the shop runs there
            assert await mesh.services("catalog")
        assert await anyio.to_thread.run_sync(proc.terminate) == 0


async def test_a_taken_default_gateway_port_moves_and_the_ready_line_says_so(
    nats_url: str,
) -> None:
    with taken(8080), Proc("gateway", nats_url=nats_url) as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready, 60)
        assert re.match(r"natsmesh gateway: http://127\.0\.0\.1:\d+ \(port 8080 was taken\)", line)
        assert "http://127.0.0.1:8080 " not in line
        proc.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(proc.popen.wait, 30) == 0


async def test_nats_on_a_taken_default_port_moves_and_says_how_to_reach_it() -> None:
    with taken(4222), Proc("nats", nats_url="") as proc:
        line = await anyio.to_thread.run_sync(proc.wait_ready)
        url = line.split(" at ")[1].split()[0]
        assert url != "nats://127.0.0.1:4222"
        assert f"(port 4222 was taken; in other shells: export NATS_URL={url})" in line
        async with ServiceRunner(Echo, nats=url), Mesh(url, tables=False) as mesh:
            assert (await mesh.call("echo.echo", {"id": 1, "name": "a"}))["id"] == 1
        assert await anyio.to_thread.run_sync(proc.terminate) == 0
