"""tests/waits.py: a bounded poll returns the first truthy result, retries only what it is told."""

from __future__ import annotations

import asyncio

import pytest
from waits import eventually, eventually_sync, next_turn

pytestmark = pytest.mark.anyio


async def test_an_async_check_that_raises_is_not_yet_then_its_result_is_returned() -> None:
    calls: list[int] = []

    async def check() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("not yet")
        return "ok"

    assert await eventually(check, within=5, every=0.001, retry_on=(OSError,)) == "ok"
    assert len(calls) == 3


async def test_running_out_names_what_and_chains_the_last_error() -> None:
    async def check() -> bool:
        raise OSError("refused")

    with pytest.raises(TimeoutError, match="the answer did not hold") as caught:
        await eventually(check, within=0.05, every=0.001, what="the answer", retry_on=(OSError,))
    assert isinstance(caught.value.__cause__, OSError)


async def test_an_error_it_was_not_told_to_retry_fails_at_once() -> None:
    def check() -> bool:
        raise ValueError("a bug in the check")

    with pytest.raises(ValueError, match="a bug"):
        await eventually(check, within=5, retry_on=(OSError,))


def test_the_sync_poll_retries_and_returns_alike() -> None:
    seen = iter([0, 0, 7])
    assert eventually_sync(lambda: next(seen), within=5, every=0.001) == 7

    def check() -> bool:
        raise OSError("refused")

    with pytest.raises(TimeoutError) as caught:
        eventually_sync(check, within=0.05, every=0.001, retry_on=(OSError,))
    assert isinstance(caught.value.__cause__, OSError)


async def test_next_turn_returns_after_what_was_scheduled_before_it() -> None:
    ran: list[str] = []
    loop = asyncio.get_running_loop()
    loop.call_soon(ran.append, "before")
    await next_turn()
    assert ran == ["before"]
