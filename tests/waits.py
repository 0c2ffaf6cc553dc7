"""Bounded waits for a state that sends no signal: poll a check until it holds, or fail.

Wait on the signal itself where there is one: an ``anyio.Event``, a message on a
subscription, a process's ready line (``Proc.wait_ready``, ``Proc.wait_stderr``), a
process's exit. These helpers are for state only a query can see: a KV entry, a
server's ``/healthz``, a queue's length. Every wait has a
bound, and a wait that runs out fails the test with a ``TimeoutError`` naming what it
waited for (and the last error the check raised, if it raised one it was told to retry).

The chaos scenarios (tests/chaos) use them too: their runners have tests/ on the path.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from natsmesh.control._controller import Controller

T = TypeVar("T")

#: Seconds between two checks: short against the waits (seconds), long against one
#: check (a KV get or an HTTP request takes a millisecond or two).
EVERY = 0.05


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within: float = 10.0,
    every: float = EVERY,
    what: str = "",
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``check`` (sync or async) until it returns something truthy; return that.

    ``retry_on``: exceptions that mean "not yet" (a server still starting refuses the
    connection); the last one is chained to the ``TimeoutError`` if time runs out.
    The check runs at least once, and once more after the bound if the bound passed
    while it slept, so a slow machine fails only a check that really did not hold.
    """
    deadline = time.monotonic() + within
    last: Exception | None = None
    while True:
        result: object = None
        try:
            got = check()
            result = await got if inspect.isawaitable(got) else got
        except retry_on as exc:
            last = exc
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'the check'} did not hold within {within} s") from last
        await anyio.sleep(every)


def eventually_sync(
    check: Callable[[], T],
    *,
    within: float = 10.0,
    every: float = EVERY,
    what: str = "",
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """``eventually`` for code outside an event loop (a synchronous fixture)."""
    deadline = time.monotonic() + within
    last: Exception | None = None
    while True:
        result: T | None = None
        try:
            result = check()
        except retry_on as exc:
            last = exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'the check'} did not hold within {within} s") from last
        time.sleep(every)


async def next_turn() -> None:
    """Return once the event loop has run what was scheduled (``call_soon``) before the
    call: a loop turn as a signal, not a length of time."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned


async def leading(controller: Controller, *, within: float = 10.0) -> None:
    """Until ``controller`` holds the lease: woken by its ``leader_changed`` event."""
    with anyio.move_on_after(within):
        while not controller.is_leader:
            await controller.leader_changed.wait()
    if not controller.is_leader:
        raise TimeoutError(f"the controller did not take the lease within {within} s")


def _states(pid: int) -> list[str]:
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a thread that ended meanwhile
    return states


async def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped: kill() returns
    before a thread running on another core has been stopped, and that thread can
    still answer a message sent the moment after.
    """
    os.kill(pid, signal.SIGSTOP)
    await eventually(lambda: all(s in ("T", "t") for s in _states(pid)), within=5.0)
