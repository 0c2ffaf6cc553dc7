"""The service the runtime's tests share (dispatch, presence, lifecycle)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pydantic

from natsmesh import Context, endpoint, service


class Quote(pydantic.BaseModel):
    sku: str
    cents: int


@service("shop", version="2.1.0", description="a shop", metadata={"team": "core"})
class Shop:
    def __init__(self) -> None:
        self.cancelled = anyio.Event()
        self.seen: list[dict[str, Any]] = []

    @endpoint(idempotent=True)
    async def quote(self, sku: str) -> Quote:
        return Quote(sku=sku, cents=100)

    @endpoint
    def blocking(self, n: int) -> int:
        time.sleep(0.01)  # a sync handler runs in a worker thread, not on the loop
        return n * 2

    @endpoint
    async def raw(self, data: bytes) -> bytes:
        return data[::-1]

    @endpoint
    async def stall(self, ctx: Context) -> None:
        try:
            await anyio.sleep_forever()  # until the call's deadline cancels it
        except BaseException:
            self.cancelled.set()
            raise

    @endpoint
    async def outer(self, ctx: Context) -> dict[str, Any]:
        inner = await ctx.mesh.call("shop.inner", timeout=10)
        return {"outer_remaining": ctx.remaining, "outer_trace": ctx.trace.trace_id, **inner}

    @endpoint
    async def inner(self, ctx: Context) -> dict[str, Any]:
        return {
            "inner_remaining": ctx.remaining,
            "inner_trace": ctx.trace.trace_id,
            "inner_caller": ctx.caller,
        }
