"""Owning tasks across ``__aenter__`` and ``__aexit__``.

A Mesh and a ServiceRunner hold anyio task groups from ``__aenter__`` to
``__aexit__``, so they must be left in the task that entered them, in the order
of the ``async with`` blocks, as any cancel scope. :class:`Nesting` checks that
on the way out, before anything is undone, and says so in plain words. Their
background tasks stop through cancel scopes of their own, never by cancelling
the group: that would cancel the user's task too.

:func:`stop` is for the objects that still own plain asyncio tasks (the
controller, the KV watch, the table cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import anyio


async def stop(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` (again and again, if need be) and wait until they are done.

    ``asyncio.wait`` rather than awaiting each task under a suppressed
    CancelledError: that would also swallow a cancellation of the *caller*
    arriving meanwhile, and a loop around it would then never end.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        # Cancelled again until done: on Python 3.11 asyncio.wait_for (inside nats-py)
        # can swallow a cancellation that lands just as its inner future completes.
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


class Nesting:
    """Checks that an object holding cancel scopes is left where and when it should be.

    ``enter()`` last thing in ``__aenter__`` opens a cancel scope that is never
    cancelled; ``exit()`` first thing in ``__aexit__`` leaves it, which anyio
    refuses (changing nothing) from another task, or while a block entered
    after the object is still open: then RuntimeError names the object.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._scope: anyio.CancelScope | None = None

    def enter(self) -> None:
        scope = anyio.CancelScope()
        scope.__enter__()
        self._scope = scope

    def exit(self) -> None:
        scope = self._scope
        if scope is None:
            return
        try:
            scope.__exit__(None, None, None)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{self._what} must be left in the task that entered it, after every"
                " async with block (and task group) entered after it: it owns a task group"
                " (an AsyncExitStack keeps the order)"
            ) from exc
        self._scope = None
