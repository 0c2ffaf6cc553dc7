"""Serving the dashboard with uvicorn on a socket the caller bound."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, minus signal handling (the caller owns signals)."""

    def __init__(self, config: uvicorn.Config, started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


async def serve(
    app: Any, sock: socket.socket, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on ``sock`` until cancelled; ``task_status.started(url)`` once listening."""
    url = url_of(sock)
    config = uvicorn.Config(
        app,
        lifespan="on",
        ws="none",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_config=None,
        log_level="warning",
        limit_concurrency=256,
        h11_max_incomplete_event_size=16 * 1024,
        # Event streams never end by themselves: a stop waits this long for them.
        timeout_graceful_shutdown=1,
    )
    server = _Server(config, lambda: task_status.started(url))
    try:
        await server.serve(sockets=[sock])
    finally:
        if server.started and not server.should_exit:
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await server.shutdown(sockets=[sock])
    if not server.started:
        raise RuntimeError("the dashboard did not start (see the log)")
