"""A TCP proxy that can drop its link: the leaf node connection goes through it.

``drop()`` closes every connection it carries and closes new ones at once (a link
gone: both ends see it at once, so NATS removes the interest across it);
``restore()`` carries them again. The proxy runs in the scenario's event loop.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.abc


class Proxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.host = host
        self.port = 0
        self.down = False
        self._links: set[anyio.abc.CancelScope] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610  # anyio's
        task_status.started(self.port)
        await listener.serve(self._carry)

    async def _carry(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self.down:
                return
            try:
                upstream = await anyio.connect_tcp(*self.upstream)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                self._links.add(tg.cancel_scope)
                tg.start_soon(_pipe, client, upstream, tg.cancel_scope)
                tg.start_soon(_pipe, upstream, client, tg.cancel_scope)
            self._links.discard(tg.cancel_scope)

    def drop(self) -> None:
        self.down = True
        for link in list(self._links):
            link.cancel()

    def restore(self) -> None:
        self.down = False


async def _pipe(
    source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, scope: anyio.abc.CancelScope
) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        async for data in source:
            await sink.send(data)
    scope.cancel()
