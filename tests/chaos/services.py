"""The services the chaos scenarios run with ``natsmesh serve chaos.services:<Name>``.

Each reply names the process that served it, so that the load can tell where
every call went (an instance, a zone, a site).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import pydantic

from natsmesh import endpoint, service


class Get(pydantic.BaseModel):
    id: int = 0
    work: float = 0.0  # seconds the handler waits (an I/O-bound service)


class Served(pydantic.BaseModel):
    pid: int


@service("catalog", version="1.0.0", description="chaos: says which process served")
class Catalog:
    @endpoint(idempotent=True)
    async def get(self, req: Get) -> Served:
        if req.work:
            await anyio.sleep(req.work)  # the I/O-bound work asked for: the load itself
        return Served(pid=os.getpid())

    @endpoint  # not idempotent: a timeout is never retried
    async def put(self, req: Get) -> Served:
        return Served(pid=os.getpid())


@service("inventory", version="1.0.0", description="chaos: a leaf site's own service")
class Inventory:
    @endpoint(idempotent=True)
    async def get(self, req: Get) -> Served:
        return Served(pid=os.getpid())


#: Requests the busy service works on at once; more are shed with a fast 503.
BUSY_CONCURRENCY = 4


@service(
    "busy", version="1.0.0", description="chaos: limited capacity", max_concurrency=BUSY_CONCURRENCY
)
class Busy:
    @endpoint(idempotent=True)
    async def work(self, req: Get) -> Served:
        await anyio.sleep(req.work)  # holds a slot of its capacity: the load itself
        return Served(pid=os.getpid())


# -- a handler that stalls its whole process ------------------------------------------------

#: Seconds the next request's handler blocks the event loop after SIGUSR1.
STALL_SECONDS = float(os.environ.get("CHAOS_STALL_SECONDS", "6"))
_stall = {"next": False}


def _arm_stall(signum: int, frame: Any) -> None:
    _stall["next"] = True


@service("sink", version="1.0.0", description="chaos: can stall")
class Sink:
    def __init__(self) -> None:
        signal.signal(signal.SIGUSR1, _arm_stall)

    @endpoint(idempotent=True)
    async def get(self, req: Get) -> Served:
        _maybe_stall()
        return Served(pid=os.getpid())

    @endpoint
    async def put(self, payload: bytes) -> Served:
        _maybe_stall()
        return Served(pid=os.getpid())


def _maybe_stall() -> None:
    if _stall["next"]:
        _stall["next"] = False
        # A handler that blocks its event loop (a CPU-bound or blocking call in an
        # async handler): nothing in the process reads its socket meanwhile.
        time.sleep(STALL_SECONDS)
