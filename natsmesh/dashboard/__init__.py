"""The mesh's web dashboard and mesh-wide metrics: an observer and its HTTP app.

:func:`run` connects an :class:`Observer` to the mesh and serves a
:class:`Dashboard` on a socket; ``natsmesh dashboard``, ``natsmesh observe`` and
``natsmesh up`` call it. The page's assets are in ``static/`` (no CDN, no build step).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from natsmesh.client._client import Mesh
from natsmesh.dashboard._app import Authorize, Dashboard
from natsmesh.dashboard._observer import Observer
from natsmesh.dashboard._serve import bind, serve, url_of

if TYPE_CHECKING:  # a connection the caller owns, handed to the Mesh
    from natsmesh.transport._transport import NATS

__all__ = ["Dashboard", "Observer", "bind", "run", "url_of"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


async def run(
    nats: str | NATS | None,
    sock: socket.socket,
    *,
    prefix: str = "mesh",
    ui: bool = True,
    hosts: Iterable[str] | None = None,
    authorize: Authorize | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Observe the mesh and serve the dashboard on ``sock`` until cancelled;
    ``task_status.started(url)`` once both run. ``hosts``: the Host names it answers
    to (default: the socket's address and the loopback names).
    """
    bound = sock.getsockname()[0]
    # Behind a wildcard address the names people use are unknown: no Host check there
    # (an exposed dashboard needs --auth anyway); on loopback it stops DNS rebinding.
    wildcard = bound in ("0.0.0.0", "::") and not hosts  # noqa: S104
    allowed = None if wildcard else set(hosts or ()) | {bound, *LOOPBACK_NAMES}
    async with (
        Mesh(nats, name="natsmesh-dashboard", prefix=prefix) as mesh,
        anyio.create_task_group() as tg,
    ):
        observer = Observer(mesh, prefix=prefix)
        await tg.start(observer.run)
        app = Dashboard(observer, hosts=allowed, authorize=authorize, ui=ui)
        url = await tg.start(functools.partial(serve, app), sock)
        task_status.started(url)
