"""Small services the tests run, in-process or as real processes (``natsmesh serve services:X``)."""

from __future__ import annotations

import os

import anyio
import pydantic

from natsmesh import Context, ServiceError, endpoint, service


class Item(pydantic.BaseModel):
    id: int
    name: str


class Sleep(pydantic.BaseModel):
    seconds: float = 0.0


class Where(pydantic.BaseModel):
    pid: int
    instance: str
    remaining: float


@service("echo", version="1.0.0", description="echoes items")
class Echo:
    @endpoint(idempotent=True)
    async def echo(self, item: Item) -> Item:
        return item

    @endpoint(idempotent=True)
    async def slow(self, req: Sleep, ctx: Context) -> Where:
        await anyio.sleep(req.seconds)  # the work the caller asked for: time must pass
        return Where(
            pid=os.getpid(), instance=ctx.headers.get("x-instance", ""), remaining=ctx.remaining
        )

    @endpoint
    async def whoami(self, ctx: Context) -> dict[str, object]:
        return {"pid": os.getpid(), "caller": ctx.caller, "trace": ctx.trace.trace_id}


@service("crashy", version="1.0.0", description="dies on start while its flag file exists")
class Crashy:
    """For crash loops: ``CRASHY_FLAG`` names a file; while it exists, starting exits 3."""

    async def __aenter__(self) -> Crashy:
        flag = os.environ.get("CRASHY_FLAG", "")
        if flag and await anyio.Path(flag).exists():
            os._exit(3)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @endpoint(idempotent=True)
    async def pid(self) -> int:
        return os.getpid()


class Welcome(pydantic.BaseModel):
    name: str
    sleep_ms: int = 0


@service("frontdesk", version="1.0.0", description="a slow greeting with a nested call")
class Frontdesk:
    """The issue's ``frontdesk.welcome``: a nested call, then ``sleep_ms`` of work."""

    @endpoint(idempotent=True)
    async def welcome(self, req: Welcome, ctx: Context) -> dict[str, object]:
        remaining = ctx.remaining
        nested = await ctx.mesh.call("echo.slow", {"seconds": 0})
        await anyio.sleep(req.sleep_ms / 1000)  # the work the caller asked for
        return {"hello": req.name, "remaining": remaining, "nested_remaining": nested["remaining"]}


#: What a hostile or careless service might put in an error message: markup, control
#: characters, and far more than anyone should send.
HOSTILE_MESSAGE = "<img src=x onerror=alert(1)><script>alert(2)</script>\n\x1b[31m" + "x" * 5000


@service("back", version="1.0.0", description="fails, with a hostile message")
class Back:
    @endpoint
    async def fail(self, ctx: Context) -> int:
        raise ServiceError(503, HOSTILE_MESSAGE)


@service("front", version="1.0.0", description="calls back, so fails with a cause")
class Front:
    @endpoint
    async def go(self, ctx: Context) -> int:
        result: int = await ctx.mesh.call("back.fail")
        return result


FAILING = [Back, Front]
