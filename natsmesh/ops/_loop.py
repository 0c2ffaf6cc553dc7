"""The event loop a command runs on: uvloop where it is installed, else asyncio's own.

uvloop is a dependency where it has wheels (not on Windows, not on PyPy), so the
long-running commands (``up``, ``serve``, ``gateway``, ``controller``, ``bench``)
run on it unless ``--loop asyncio`` asks otherwise; ``--loop uvloop`` insists, and
fails with one clear line where uvloop is missing. The choice is made here, for
the CLI's own ``anyio.run``: importing natsmesh installs no loop policy and
touches no loop, so an application that embeds the library keeps its own.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

import anyio

LOOPS: Final = ("auto", "uvloop", "asyncio")
LONG_RUNNING: Final = ("up", "serve", "gateway", "controller", "bench")

_T = TypeVar("_T")
logger = logging.getLogger("natsmesh.loop")


class LoopUnavailable(ValueError):
    """``--loop uvloop`` where uvloop is not installed."""


def resolve(loop: str) -> str:
    """``"uvloop"`` or ``"asyncio"``: what ``loop`` (one of LOOPS) runs on here.

    Raises LoopUnavailable for ``"uvloop"`` where uvloop cannot be imported, and
    ValueError for a name not in LOOPS.
    """
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r} (one of {', '.join(LOOPS)})")
    if loop == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401  (imported to know it is there)
    except ImportError:
        if loop == "uvloop":
            raise LoopUnavailable(
                "--loop uvloop: uvloop is not installed (it has no wheels for Windows"
                " or PyPy); use --loop asyncio"
            ) from None
        return "asyncio"
    return "uvloop"


def backend_options(loop: str = "auto") -> dict[str, Any]:
    """anyio's asyncio backend options for ``loop`` (see :func:`resolve`)."""
    return {"use_uvloop": True} if resolve(loop) == "uvloop" else {}


def running() -> str:
    """The running event loop, named with its version: ``uvloop 0.21.0``, ``asyncio``."""
    module = type(asyncio.get_running_loop()).__module__.split(".")[0]
    if module == "uvloop":
        return f"uvloop {importlib.metadata.version('uvloop')}"
    return module


def run(main: Callable[[_T], Awaitable[int]], arg: _T, *, loop: str = "auto") -> int:
    """``anyio.run(main, arg)`` on ``loop``; logs (debug) the loop it really runs on."""

    async def logged(value: _T) -> int:
        logger.debug("event loop: %s", running())
        return await main(value)

    return anyio.run(logged, arg, backend_options=backend_options(loop))


def add_loop_options(
    commands: Mapping[str, argparse.ArgumentParser], names: Iterable[str] = LONG_RUNNING
) -> None:
    """``--loop auto|uvloop|asyncio`` on each of ``names`` among ``commands``."""
    for name in names:
        commands[name].add_argument(
            "--loop",
            choices=LOOPS,
            default="auto",
            help="event loop (auto: uvloop where installed, else asyncio)",
        )
