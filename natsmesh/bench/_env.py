"""What a benchmark ran on, for every ``natsmesh bench``: one header line, one JSON object.

Figures mean little without the event loop, the HTTP parser and the versions
they were measured with (uvloop alone changes the gateway's by 40x where asyncio
meets a socket without ``TCP_NODELAY``), so every bench prints this first and
puts it under ``"environment"`` in ``--json``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from typing import Any

from natsmesh.ops._loop import resolve
from natsmesh.transport._transport import connect


class BenchError(Exception):
    """A benchmark that cannot produce figures (said in one line, not a traceback)."""


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def http_parser() -> str:
    """The HTTP parser uvicorn (and the gateway) picks here: httptools where installed."""
    if importlib.util.find_spec("httptools") is not None:
        return f"httptools {_version('httptools')}"
    return f"h11 {_version('h11')}"


def cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


async def nats_server_version(url: str) -> str:
    """The version the nats-server at ``url`` reports in its INFO."""
    nc = await connect(url, name="bench-environment")
    try:
        v = nc.connected_server_version
        dev = v.dev
        return f"{v.major}.{v.minor}.{v.patch}" + (f"-{dev}" if dev else "")
    finally:
        await nc.close()


async def environment(url: str, *, loop: str, http: bool = False) -> dict[str, Any]:
    """The environment of a bench against the nats-server at ``url`` on ``loop``.

    ``http``: the bench serves HTTP, so the parser matters and is reported.
    """
    name = resolve(loop)
    env: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loop": f"uvloop {_version('uvloop')}" if name == "uvloop" else "asyncio",
    }
    if http:
        env["http"] = http_parser()
    env.update(
        {
            "nats_py": _version("nats-py"),
            "uvicorn": _version("uvicorn"),
            "nats_server": await nats_server_version(url),
            "cpus": cpus(),
        }
    )
    return env


def header(env: dict[str, Any]) -> str:
    """One line: ``CPython 3.11.7 | loop uvloop 0.21.0 | HTTP httptools 0.6.4 | ...``."""
    parts = [env["python"], f"loop {env['loop']}"]
    if "http" in env:
        parts.append(f"HTTP {env['http']}")
    parts += [
        f"nats-py {env['nats_py']}",
        f"uvicorn {env['uvicorn']}",
        f"nats-server {env['nats_server']}",
        f"{env['cpus']} CPUs",
    ]
    return " | ".join(parts)
