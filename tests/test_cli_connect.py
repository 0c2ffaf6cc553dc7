"""No server, a frozen one, refused credentials: one-shot commands give up, long-running ones wait.

Real processes against real sockets: a port that refuses connections, a listener
that accepts and never speaks, one that hangs up at once (counting the attempts),
and a real nats-server that comes, goes and comes back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from procs import Proc
from test_cli import run
from waits import eventually

from natsmesh import Mesh, NatsRefused, NatsUnreachable
from natsmesh.testing import EmbeddedNats

pytestmark = pytest.mark.anyio

ONE_SHOT = [
    ["ls"],
    ["info", "echo"],
    ["stats", "echo"],
    ["call", "echo.echo", '{"id": 1, "name": "a"}'],
    ["routes", "show"],
    ["routes", "apply", "examples/routes.toml"],
    ["status"],
    ["bench", "--seconds", "0.1"],
]


@contextmanager
def refusing_port() -> Iterator[str]:
    """A loopback port bound but not listening: every connection is refused, and no one
    else can take the port while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


class HangUp:
    """A listener that accepts each connection and closes it at once, counting them."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.count = 0
        self._waits: list[tuple[int, threading.Event]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            conn.close()
            with self._lock:
                self.count += 1
                for n, event in self._waits:
                    if self.count >= n:
                        event.set()

    def wait_for(self, n: int, timeout: float = 30) -> None:
        event = threading.Event()
        with self._lock:
            self._waits.append((self.count + n, event))
        assert event.wait(timeout), f"fewer than {n} more connection attempts"

    def close(self) -> None:
        # close() alone leaves a thread blocked in accept() holding the port (Linux):
        # shutdown wakes it.
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(10)


@pytest.mark.parametrize("args", ONE_SHOT, ids=lambda a: " ".join(a[:2]))
async def test_a_one_shot_command_without_a_server_says_what_to_do(args: list[str]) -> None:
    with refusing_port() as url:
        done = await run(*args, "--nats", url, "--connect-timeout", "0.5")
    assert done.returncode == 7, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"natsmesh: cannot connect to NATS at {url} within 0.5 s")
    assert "natsmesh up" in lines[0]
    assert "NATS_URL" in lines[0]


async def test_nats_url_from_the_environment_is_named_too() -> None:
    with refusing_port() as url:
        done = await run("call", "catalog.get", '{"id": 1}', env={"NATS_URL": url})
    assert done.returncode == 7, done.stderr
    assert f"cannot connect to NATS at {url} within 3 s" in done.stderr  # the default


async def test_a_server_that_accepts_and_never_speaks_is_given_up_on() -> None:
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(8)  # the kernel completes handshakes; nobody ever sends INFO
        url = f"nats://127.0.0.1:{frozen.getsockname()[1]}"
        done = await run("ls", "--nats", url, "--connect-timeout", "0.5")
    assert done.returncode == 7, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_refused_credentials_fail_at_once_without_showing_the_password(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "auth.conf"
    conf.write_text("authorization { user: ada, password: right-one }\n")
    with EmbeddedNats(config_file=conf, jetstream=False) as server:
        url = server.url.replace("nats://", "nats://ada:wrong-one@")
        with anyio.fail_after(30):  # far less than the connect timeout: no retrying
            done = await run("ls", "--nats", url, "--connect-timeout", "60")
    assert done.returncode == 7, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "refused this client's credentials" in line
    assert "--creds" in line
    assert "wrong-one" not in line
    assert "ada:***@" in line


async def test_mesh_with_a_connect_timeout_raises_nats_unreachable() -> None:
    with refusing_port() as url, anyio.fail_after(20), pytest.raises(NatsUnreachable) as caught:
        async with Mesh(url, connect_timeout=0.3):
            pass
    assert caught.value.url == url
    assert not isinstance(caught.value, NatsRefused)
    assert isinstance(caught.value, ConnectionError)


async def test_without_a_connect_timeout_a_client_waits_for_its_server_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hangup = HangUp()
    port = hangup.port
    url = f"nats://127.0.0.1:{port}"
    caplog.set_level(logging.DEBUG, logger="natsmesh")
    async with anyio.create_task_group() as tg:
        connected = anyio.Event()

        closed = anyio.Event()

        async def client() -> None:
            async with Mesh(url, name="patient", tables=False):
                connected.set()
            closed.set()

        tg.start_soon(client)
        await anyio.to_thread.run_sync(hangup.wait_for, 6)
        hangup.close()
        with EmbeddedNats(port=port, jetstream=False):
            with anyio.fail_after(20):
                await connected.wait()
                # The server stays until the client has closed: stopped first, it would
                # reset the client's connection, a real disconnect to report.
                await closed.wait()
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "natsmesh" and r.levelno >= logging.WARNING
    ]
    # The first failed attempt and the end of the outage; nothing between.
    assert _events(said) == [f"cannot connect to {url}", f"connected to {url}"], said


async def test_a_long_running_command_logs_each_change_of_state_once() -> None:
    hangup = HangUp()
    port = hangup.port
    url = f"nats://127.0.0.1:{port}"
    with Proc("serve", "services:Echo", nats_url=url) as proc:
        try:
            await anyio.to_thread.run_sync(hangup.wait_for, 8)  # 8 failed attempts...
            assert _events(proc.stderr_lines) == [f"cannot connect to {url}"]  # ...said once
        finally:
            hangup.close()
        server = EmbeddedNats(port=port, jetstream=False)
        server.start()
        try:
            await anyio.to_thread.run_sync(proc.wait_ready)
            async with Mesh(url, tables=False) as mesh:
                assert (await mesh.call("echo.echo", {"id": 1, "name": "a"}))["id"] == 1
            server.stop()
            hangup = HangUp(port)  # the server is gone: count the reconnect attempts
            try:
                await anyio.to_thread.run_sync(hangup.wait_for, 8)
            finally:
                hangup.close()
            server.start()
            await proc.says("reconnected to", within=30)
            assert _events(proc.stderr_lines) == [
                f"cannot connect to {url}",
                f"connected to {url}",
                f"disconnected from {url}",
                f"reconnected to {url}",
            ], proc.stderr_lines
            assert all(line.strip() for line in proc.stderr_lines), "an empty log line"
            assert await anyio.to_thread.run_sync(proc.terminate) == 0
        finally:
            server.stop()


_EVENT = re.compile(
    r"nats \S+: ((?:still )?cannot connect to|connected to|disconnected from|reconnected to)"
    r" (nats://[^\s:]+:\d+)"
)


def _events(lines: list[str]) -> list[str]:
    """The connection's state changes in log lines, as "what url"."""
    return [f"{m[1]} {m[2]}" for line in lines if (m := _EVENT.search(line))]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["in-process", "workers"])
async def test_a_service_waiting_for_its_server_stops_on_a_signal(
    signum: signal.Signals, workers: list[str]
) -> None:
    with refusing_port() as url, Proc("serve", "services:Echo", *workers, nats_url=url) as proc:
        waiting = 2 if workers else 1  # each worker says it cannot connect, once
        await proc.says("cannot connect to", waiting)
        children = _children(proc.pid)
        assert len(children) == (2 if workers else 0)
        try:
            proc.signal(signum)
            assert await anyio.to_thread.run_sync(proc.popen.wait, 30) == 0
            await eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children))
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in "".join(proc.stderr_lines)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("nats://", "no host name"),
        ("foo bar", "no host name"),
        ("nats://127.0.0.1:99999", "Port out of range"),
        ("http://127.0.0.1:4222", "the scheme must be one of nats://, tls://, ws://, wss://"),
        (",", "no NATS server URL given"),
        ("nats://ada:secret@:4222", "no host name"),
    ],
)
@pytest.mark.parametrize("where", ["flag", "environment"])
async def test_a_server_url_nats_py_cannot_use_is_a_usage_error(
    url: str, reason: str, where: str
) -> None:
    if where == "flag":
        done = await run("ls", "--nats", url)
    else:
        done = await run("serve", "services:Echo", env={"NATS_URL": url})  # long-running too
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert reason in line
    assert "secret" not in line
