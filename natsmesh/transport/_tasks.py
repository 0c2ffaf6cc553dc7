"""Stopping the plain asyncio tasks that natsmesh objects own.

Objects that users enter and exit from any task (a Mesh, a ServiceRunner, a
controller) cannot hold an anyio task group across ``__aenter__`` and
``__aexit__``: cancel scopes must be exited in the task that entered them. They
own plain tasks instead, and stop them here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


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
