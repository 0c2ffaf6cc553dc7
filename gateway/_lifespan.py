"""The ASGI lifespan protocol, around an app's ``start`` and ``stop``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway._request import Receive, Send

log = logging.getLogger("natsmesh.gateway")


async def lifespan(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    receive: Receive,
    send: Send,
) -> None:
    """Start on ``lifespan.startup``, stop on ``lifespan.shutdown``, and stop whatever
    ends the task: a server that cancels it instead of sending shutdown (a second
    Ctrl-C) still gets the Mesh closed. (``stop`` is not shielded: the Mesh's task
    group was entered outside any shield here.)
    """
    try:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await start()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)[:500]})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    finally:
        await stop()
