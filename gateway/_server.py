"""The gateway's HTTP server (uvicorn): in this process, or in N worker processes.

(Running *services* is ``natsmesh.serve``; this module runs the HTTP server.)
``run_server()`` runs one uvicorn server inside the caller's event loop (``natsmesh
gateway``, ``natsmesh up``): the caller binds nothing, owns the signals and stops
the server by leaving; readiness is the socket listening after the app's
lifespan startup. ``run_workers()`` is ``--workers N``: the socket is bound once
here, and each worker process builds its own app and Mesh with :func:`factory`
(``gateway._server:factory``) from ``NATS_URL``.

uvicorn runs with httptools where it is installed (a dependency where it has
wheels), the gateway's protocol limits (:mod:`gateway._protocol`), no access log
(the metrics count every request), no ``Server`` header and no proxy-header
trust. ``run_server()`` runs on the caller's loop; workers on the loop the parent names
(``natsmesh gateway --loop``: uvloop where installed by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

import anyio
import uvicorn
from anyio.abc import TaskStatus
from uvicorn.supervisors import Multiprocess

from gateway._app import freeze_gc
from gateway._limits import GatewayLimits
from gateway._protocol import protocol_class
from natsmesh import Mesh

ENV_NATS: Final = "NATS_URL"
ENV_LIMITS: Final = "NATSMESH_GATEWAY_LIMITS"  # JSON of GatewayLimits fields, for workers
# The auth file's path, for workers: each loads it (and its keys) itself, since keys
# are not passed through the environment and key objects cannot be pickled over.
ENV_AUTH: Final = "NATSMESH_GATEWAY_AUTH"
# The parent's log level, for workers: ``natsmesh -v gateway --workers N`` logs in each.
ENV_LOG_LEVEL: Final = "NATSMESH_GATEWAY_LOG_LEVEL"
KEEP_ALIVE: Final = 5.0
LOOPS: Final = ("auto", "uvloop", "asyncio")
logger = logging.getLogger("gateway")


def config(
    app: Any,
    *,
    limits: GatewayLimits,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    http: type[asyncio.Protocol] | str | None = None,
    factory: bool = False,
    loop: str = "auto",
) -> uvicorn.Config:
    """The uvicorn config of a gateway (``app`` an ASGI app, or an import string).

    ``http`` is the protocol: by default the gateway's, with ``limits``. ``loop`` is
    the event loop of the processes uvicorn starts (``auto``: uvloop where installed).
    """
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r} (one of {', '.join(LOOPS)})")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=factory,
        loop=loop,
        http=protocol_class(limits) if http is None else http,
        ws="none",
        lifespan="on",
        # The app answers its own concurrency limit with a JSON 503 and Retry-After;
        # uvicorn's (connections and tasks) stays well above it, as a backstop.
        limit_concurrency=limits.max_concurrency * 2 + 256,
        timeout_keep_alive=int(KEEP_ALIVE),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=10,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_config=None,
        log_level="warning",
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket (raises OSError: port taken, bad address).

    Its ``proto`` is ``IPPROTO_TCP``, not 0: asyncio's selector loop sets ``TCP_NODELAY``
    on an accepted connection only when the listening socket says so, and without it a
    keep-alive response written in two sends (head, body) waits ~40 ms for the client's
    delayed ACK. (The gateway's protocols set it on every connection too.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, minus signal handling (the caller owns signals)."""

    def __init__(self, config: uvicorn.Config, started: Callable[[], None], freeze: bool) -> None:
        super().__init__(config)
        self._on_started = started
        self._freeze = freeze

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            if self._freeze:
                freeze_gc()
            self._on_started()


async def run_server(
    app: Any,
    sock: socket.socket,
    *,
    limits: GatewayLimits,
    http: str = "auto",
    freeze: bool = False,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the HTTP server for ``app`` on ``sock`` until cancelled; ``started(url)`` once listening.

    Cancelling stops the server gracefully: connections finish, lifespan shutdown runs.
    ``freeze`` tunes this process's garbage collector for serving (see ``freeze_gc``):
    for a process that is a server, not for one that merely runs one.
    """
    url = url_of(sock)
    server = _Server(
        config(app, limits=limits, http=protocol_class(limits, http)),
        lambda: task_status.started(url),
        freeze,
    )
    try:
        await server.serve(sockets=[sock])
    finally:
        if server.started and not server.should_exit:
            # Cancelled from outside: shut down in a shielded scope, as a signal would.
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await server.shutdown(sockets=[sock])
    if not server.started:
        raise RuntimeError("the gateway did not start (see the log)")


def factory() -> Any:
    """The app of one ``--workers`` process: its own Mesh from ``NATS_URL``, owned by the app."""
    from gateway import GatewayAuth, create_app

    level = os.environ.get(ENV_LOG_LEVEL)
    if level:
        logging.basicConfig(
            level=int(level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logger.debug("worker %d: event loop: %s", os.getpid(), _running_loop())
    limits = GatewayLimits(**_limits_from_env())
    auth_file = os.environ.get(ENV_AUTH)
    auth = GatewayAuth.load(auth_file) if auth_file else None
    mesh = Mesh(os.environ.get(ENV_NATS), name=f"gateway-{os.getpid()}", kind="gateway")
    app = create_app(mesh, limits=limits, owns_mesh=True, auth=auth)
    app.freeze_gc = True  # a worker process serves this one app
    return app


def _running_loop() -> str:
    # uvicorn builds the app inside the worker's running loop.
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def _limits_from_env() -> dict[str, Any]:
    raw = os.environ.get(ENV_LIMITS)
    return dict(json.loads(raw)) if raw else {}


def __getattr__(name: str) -> Any:
    # "gateway._server:WorkerProtocol": a worker's protocol class, with the limits its
    # parent put in the environment (a class made at run time cannot be pickled over).
    if name == "WorkerProtocol":
        return protocol_class(GatewayLimits(**_limits_from_env()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Supervisor(Multiprocess):
    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], ready: Callable[[], None]
    ) -> None:
        super().__init__(config, sockets)
        self._ready = ready

    def init_processes(self) -> None:
        super().init_processes()
        if all(p.wait_until_ready(60, self.should_exit) for p in self.processes):
            self._ready()


def run_workers(
    *,
    sock: socket.socket,
    workers: int,
    nats: str | None,
    limits: GatewayLimits,
    ready: Callable[[str], None],
    auth_file: str | None = None,
    loop: str = "auto",
) -> None:
    """Run ``workers`` gateway processes on ``sock`` until SIGINT or SIGTERM (blocks).

    ``auth_file`` is loaded by each worker (load it here first to fail fast); each
    worker runs on ``loop`` (``auto``, ``uvloop`` or ``asyncio``).
    """
    os.environ[ENV_LOG_LEVEL] = str(logging.getLogger().getEffectiveLevel())
    if nats:
        os.environ[ENV_NATS] = nats
    if auth_file:
        os.environ[ENV_AUTH] = os.path.abspath(auth_file)
    os.environ[ENV_LIMITS] = json.dumps(dataclasses.asdict(limits))
    cfg = config(
        "gateway._server:factory",
        limits=limits,
        workers=workers,
        factory=True,
        http="gateway._server:WorkerProtocol",
        loop=loop,
    )
    url = url_of(sock)
    _Supervisor(cfg, [sock], lambda: ready(url)).run()
    sys.stdout.flush()
