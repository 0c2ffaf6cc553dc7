"""Expire many short-lived things by deadline with one task instead of a timer each.

On the request path a timer per request (``call_later`` and its cancel, or an
``asyncio.timeout`` block) costs more than the decode, validate and encode of a
small payload together. One sweeper that looks at the open deadlines every
``tick`` seconds costs nothing per request. It wakes at the earliest deadline it
saw when it last looked, if that comes before the next tick: a deadline is late
only when it was added during a sleep and falls before its end (by less than a tick).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Generic, TypeVar

import anyio
import anyio.abc

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """Keys with deadlines (``time.monotonic()`` instants); ``on_expire(key)`` once each.

    The sweeper runs while ``async with deadlines.running():`` is open; it sleeps
    while there is nothing to watch. It lives in a task group, so the block must
    be entered and left in one task (as every ``async with`` is), in order with
    the other cancel scopes of that task.
    """

    def __init__(self, on_expire: Callable[[K], None], *, tick: float) -> None:
        self._on_expire = on_expire
        self._tick = tick
        self._due: dict[K, float] = {}
        self._wake = anyio.Event()
        self._waiting = False  # the sweeper waits for a first key: add() must wake it

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: K, deadline: float) -> None:
        if self._waiting:
            self._waiting = False
            self._wake.set()
        self._due[key] = deadline

    def discard(self, key: K) -> None:
        self._due.pop(key, None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            sweeper: anyio.CancelScope = await tg.start(self._run)
            try:
                yield
            finally:
                # The sweeper's own scope, not the group's: cancelling the group would
                # also cancel the task that holds it, were its blocks left out of order.
                sweeper.cancel()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await self._sweep()

    async def _sweep(self) -> None:
        wait = self._tick
        while True:
            if not self._due:
                self._wake = anyio.Event()
                self._waiting = True
                await self._wake.wait()
                wait = self._tick
            await anyio.sleep(wait)
            now = time.monotonic()
            wait = min(self._tick, max(0.0, self.expire(now) - now))

    def expire(self, now: float) -> float:
        """Call ``on_expire`` for every key whose deadline is not after ``now``.

        Returns the earliest deadline still open (infinity when none is).
        """
        expired = []
        earliest = math.inf
        for key, deadline in self._due.items():
            if deadline <= now:
                expired.append(key)
            elif deadline < earliest:
                earliest = deadline
        for key in expired:
            del self._due[key]
            self._on_expire(key)
        return earliest
