"""Run a real nats-server process for development and tests.

This module's one job is the life of a nats-server child process: find the
binary, write the small config that natsmesh needs (fast ping-based detection
of frozen clients, lame duck timings, JetStream store), start it, wait until the
server itself says it is ready, and stop it without leaving a process, a pipe or
a temporary directory behind.

Exceptions::

    MeshError (and RuntimeError)
    ├── NatsServerNotFound      no usable nats-server binary (natsmesh.ops._binary)
    └── NatsServerStartFailed   the process exited or was not ready in time
        └── NatsPortInUse       ... because its client port was taken
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import anyio

from natsmesh.ops._binary import (
    NatsPortInUse,
    NatsServerStartFailed,
    die_with_parent,
    find_nats_server,
    port_taken,
    version_of,
)

__all__ = ["EmbeddedNats"]

_log = logging.getLogger("natsmesh.nats_server")

_READY_LINE = "Server is ready"
_CLIENT_LINE = re.compile(r"Listening for client connections on (\S+)")
_MONITOR_LINE = re.compile(r"Starting http monitor on (\S+)")
# nats-server's own spelling of "pick any free port"; the kernel chooses while the
# server binds, so two servers can never race for a port we probed earlier.
_RANDOM_PORT = -1
_LOG_TAIL = 200
_STOP_TIMEOUT = 10.0


def _url_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name, such as localhost
    if address.is_unspecified:
        # A wildcard bind address is not something a client can dial.
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


def _conf_string(value: str) -> str:
    # The nats-server config lexer accepts JSON-style escapes in double quotes.
    return json.dumps(value, ensure_ascii=False)


class EmbeddedNats:
    """A nats-server child process with the settings natsmesh relies on.

    Use it as ``async with EmbeddedNats() as server:``, as ``with EmbeddedNats()
    as server:``, or call :meth:`start` and :meth:`stop` (as pytest fixtures do).
    A stopped server may be started again; it then reuses its port so that
    clients reconnect to the same URL.

    ``port=None`` lets the server pick a free port; the monitoring port is always
    picked that way. ``store_dir=None`` puts JetStream in a temporary directory
    that :meth:`stop` removes.

    ``config_file`` is included after the generated settings, so its values win
    over them, except for the listen address, ports and log destination. A
    ``jetstream`` block in it replaces the generated one, temporary store
    included; it should then set its own ``store_dir`` (and ``store_dir`` here
    must stay None, as nats-server refuses two store directories).

    ``cwd`` is the server's working directory, against which a config file's
    relative paths (certificates, ``store_dir``) resolve; ``env`` is added to its
    environment, for config files that read ``$VARIABLES``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        jetstream: bool = True,
        store_dir: Path | None = None,
        config_file: Path | None = None,
        server_name: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | Path | None = None,
        ready_timeout: float = 10.0,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.jetstream = jetstream
        self.store_dir = store_dir
        self.config_file = config_file
        self.server_name = server_name
        self.extra_args = tuple(extra_args)
        self.binary = str(binary) if binary is not None else find_nats_server()
        self.ready_timeout = ready_timeout
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._requested_port = port
        self._port: int | None = port
        self._monitor_port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._lines: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL)
        self._ready = threading.Event()
        # Set on "ready" or on end of output, whichever comes first.
        self._settled = threading.Event()

    # -- properties -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (known once started, or when given explicitly)."""
        if self._port is None or self._port == _RANDOM_PORT:
            raise RuntimeError("the server has not been started, so its port is not known yet")
        return self._port

    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4222``."""
        return f"nats://{_url_host(self.host)}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring URL, e.g. ``http://127.0.0.1:8222``."""
        if self._monitor_port is None:
            raise RuntimeError("the server is not running")
        return f"http://{_url_host(self.host)}:{self._monitor_port}"

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        if self._proc is None:
            raise RuntimeError("the server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True between a successful start and stop, while the process lives."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> str:
        """The binary's version without the leading ``v``, e.g. ``"2.15.1"``."""
        return version_of(self.binary)

    def log_tail(self) -> list[str]:
        """The last lines (up to 200) the server wrote."""
        with self._lock:
            return list(self._lines)

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the server and return once it reports that it is ready.

        The server is bound to the life of the calling thread (Linux's parent-death
        signal follows the thread that started a child): call it from a thread that
        outlives the server, as ``async with`` does.

        Raises:
            RuntimeError: already running.
            NatsPortInUse: the port asked for is taken.
            NatsServerStartFailed: the server exited or was not ready within
                ``ready_timeout`` seconds; the message carries its last output.
        """
        self._spawn()
        self._await_ready()

    def _spawn(self) -> None:
        if self._proc is not None:
            raise RuntimeError("the server is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix="natsmesh-nats-")
        try:
            args = self._command(Path(self._tmp.name))
            self._lines.clear()
            self._ready.clear()
            self._settled.clear()
            self._monitor_port = None
            # stderr is merged into stdout so that a single drained pipe carries
            # everything; an undrained pipe would block the server once it fills.
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=None if self.env is None else {**os.environ, **self.env},
                text=True,
                errors="replace",
                # Its own session: Ctrl-C in a terminal signals the whole foreground
                # group, and the server must outlive the services that drain through it.
                start_new_session=True,
                # ...but never its parent: a parent killed with SIGKILL (a test timeout)
                # would otherwise leave the server running.
                preexec_fn=die_with_parent,
            )
        except BaseException:
            self._cleanup_tmp()
            raise
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._drain,
            args=(self._proc.stdout,),
            name=f"nats-server-{self._proc.pid}-log",
            daemon=True,
        )
        self._reader.start()

    def _await_ready(self) -> None:
        assert self._proc is not None
        asked = self._port  # None: any free port (a restart asks for the port it had)
        output_ended = self._settled.wait(self.ready_timeout)
        if self._ready.is_set():
            _log.debug("nats-server %d ready at %s", self._proc.pid, self.url)
            return
        returncode = None
        if output_ended:
            # The pipe reaches EOF a moment before the process can be reaped.
            with contextlib.suppress(subprocess.TimeoutExpired):
                returncode = self._proc.wait(_STOP_TIMEOUT)
        self._shutdown()
        tail = self.log_tail()
        if asked and any(port_taken(line) for line in tail):
            raise NatsPortInUse(asked, log_tail=tail, returncode=returncode)
        if returncode is None:
            message = f"nats-server did not report readiness within {self.ready_timeout:g} s"
        else:
            message = f"nats-server exited with code {returncode} while starting"
        raise NatsServerStartFailed(message, log_tail=tail, returncode=returncode)

    def stop(self, *, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent."""
        if self._proc is None:
            return
        self._shutdown(timeout)

    def lame_duck(self) -> None:
        """Put the server in lame duck mode (SIGUSR2).

        It stops accepting clients, asks connected ones to move to another server
        of the cluster over ``lame_duck_duration``, then exits.
        """
        if self._proc is None:
            raise RuntimeError("the server is not running")
        self._proc.send_signal(signal.SIGUSR2)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # Spawned from this (the event loop's) thread: a worker thread would take the
        # server with it when the thread pool retires it (the parent-death signal).
        # Shielded: a cancellation that arrived mid-start would otherwise leave a
        # running process with no __aexit__ to stop it. Start is bounded by
        # ready_timeout.
        self._spawn()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._await_ready)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    # -- internals --------------------------------------------------------------

    def _command(self, tmp: Path) -> list[str]:
        conf = tmp / "natsmesh.conf"
        conf.write_text(self._config_text(tmp), encoding="utf-8")
        # A restart keeps the port it was given, so clients reconnect to the same URL.
        port = self._port if self._port is not None else _RANDOM_PORT
        args = [self.binary, "-c", str(conf), "-a", self.host, "-p", str(port)]
        args += ["--http_port", str(_RANDOM_PORT)]
        if self.jetstream:
            args.append("-js")
            # nats-server rejects -sd together with a store_dir from any config file
            # ("Duplicate 'store_dir'"), so the temporary store goes in the config
            # instead, where a config_file's jetstream block can replace it.
            if self.store_dir is not None:
                args += ["-sd", str(self.store_dir)]
        if self.server_name is not None:
            args += ["--server_name", self.server_name]
        args += self.extra_args
        return args

    def _config_text(self, tmp: Path) -> str:
        lines = [
            "# Generated by natsmesh for an embedded nats-server.",
            # A SIGSTOPped member of a queue group keeps receiving its share until
            # the server drops it: 2 missed pings at 1 s is 2-3 s, not ~4 minutes.
            'ping_interval: "1s"',
            "ping_max: 2",
            "max_payload: 1MB",
            'lame_duck_duration: "30s"',
            'lame_duck_grace_period: "1s"',
        ]
        if self.jetstream and self.store_dir is None:
            lines.append(f"jetstream {{ store_dir: {_conf_string(str(tmp / 'store'))} }}")
        if self.config_file is not None:
            # nats-server joins include paths onto the including file's directory,
            # even absolute ones, so the include must be relative.
            rel = os.path.relpath(Path(self.config_file).resolve(), tmp.resolve())
            lines.append(f"include {_conf_string(rel)}")
        # Readiness is read from the server's output, so it must not go to a file.
        lines.append('log_file: ""')
        return "\n".join(lines) + "\n"

    def _drain(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                line = raw.rstrip("\n")
                _log.debug("%s", line)
                with self._lock:
                    self._lines.append(line)
                if not self._ready.is_set():
                    self._parse(line)
        except (OSError, ValueError):
            # The stream was closed under us during shutdown; nothing left to drain.
            pass
        finally:
            self._settled.set()

    def _parse(self, line: str) -> None:
        if match := _CLIENT_LINE.search(line):
            self._port = int(match.group(1).rsplit(":", 1)[1])
        elif match := _MONITOR_LINE.search(line):
            self._monitor_port = int(match.group(1).rsplit(":", 1)[1])
        elif _READY_LINE in line:
            self._ready.set()
            self._settled.set()

    def _shutdown(self, timeout: float = _STOP_TIMEOUT) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("nats-server %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
            if self._reader is not None:
                self._reader.join(_STOP_TIMEOUT)
            if proc.stdout is not None:
                proc.stdout.close()
        self._reader = None
        self._monitor_port = None
        if self._requested_port is None and self._port is not None and not self._ready.is_set():
            # Never became ready: forget a port that was never confirmed.
            self._port = None
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.cleanup()
