"""Owning tasks across ``__aenter__`` and ``__aexit__``.

A Mesh and a ServiceRunner hold anyio task groups from ``__aenter__`` to
``__aexit__``, so they must be left in the task that entered them, in the order
of the ``async with`` blocks, as any cancel scope. :class:`Nesting` checks that
on the way out, before anything is undone, and says so in plain words. Their
background tasks stop through cancel scopes of their own, never by cancelling
the group: that would cancel the user's task too. :func:`background` is such
a group, for objects that start tasks on demand (the table cache's loads).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc


@contextlib.asynccontextmanager
async def background() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose tasks all stop, on the way out, through a scope of their own.

    They run under a helper task, not under the task that enters: stopping them
    never cancels that task's code, even if it leaves out of order (anyio then
    raises, having changed nothing). Its tasks must not raise (log instead): a
    failure would cancel the group around the entering task's code.
    """
    async with anyio.create_task_group() as outer:
        inner, scope = await outer.start(_host)
        try:
            yield inner
        finally:
            scope.cancel()


async def _host(
    *, task_status: anyio.abc.TaskStatus[tuple[anyio.abc.TaskGroup, anyio.CancelScope]]
) -> None:
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:
            task_status.started((tasks, scope))
            await anyio.sleep_forever()


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
