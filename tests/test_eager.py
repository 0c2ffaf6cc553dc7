"""natsmesh _eager: a coroutine's first step runs at once; only one that waits gets a task."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import anyio
import anyio.to_thread
import pytest

from natsmesh.transport import _eager
from natsmesh.transport._eager import start

pytestmark = pytest.mark.anyio

seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_a_coroutine_that_never_waits_needs_no_task() -> None:
    loop = asyncio.get_running_loop()
    caller = asyncio.current_task()
    tasks = len(asyncio.all_tasks())
    steps: list[object] = []

    async def quick() -> None:
        seen.set("quick")  # in a context of its own, as a task's would be
        steps.append(asyncio.current_task())

    assert start(quick(), loop) is None
    assert len(steps) == 1  # done before start() returned
    assert steps[0] is not caller
    assert asyncio.current_task() is caller
    assert len(asyncio.all_tasks()) == tasks
    assert seen.get() == "unset"


async def test_a_coroutine_that_waits_continues_in_the_task_it_started_in() -> None:
    loop = asyncio.get_running_loop()
    tasks: list[object] = []

    async def waits() -> str:
        seen.set("waits")
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0.001)  # a wait on a timer: the behaviour under test
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)  # a bare yield
        return seen.get()

    task = start(waits(), loop)
    assert task is not None
    assert len(tasks) == 1  # the first step ran inside start()
    assert await task == "waits"
    assert tasks == [task, task]
    assert "Task" in repr(task)


async def test_scopes_entered_before_the_first_wait_are_left_after_it() -> None:
    loop = asyncio.get_running_loop()
    out: list[Any] = []

    async def scoped() -> None:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep_forever()  # until the scope's deadline
        out.append(scope.cancelled_caught)
        async with asyncio.timeout(5):
            await asyncio.sleep(0)  # a bare yield inside asyncio's own scope
        out.append(await anyio.to_thread.run_sync(lambda: 42))
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0)
        out.append(anyio.get_current_task().name is not None)

    task = start(scoped(), loop)
    assert task is not None
    with anyio.fail_after(5):
        await task
    assert out == [True, 42, True]


async def test_a_scope_cancelled_within_the_first_step() -> None:
    loop = asyncio.get_running_loop()

    async def cancels_itself() -> bool:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.sleep_forever()  # cancelled already: it returns at once
        return scope.cancelled_caught

    task = start(cancels_itself(), loop)
    assert task is not None
    with anyio.fail_after(5):
        assert await task is True


async def test_an_exception_in_the_first_step_reaches_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        start(fails(), asyncio.get_running_loop())


async def test_a_task_cancelled_before_its_first_step_is_cancelled_where_it_waits() -> None:
    loop = asyncio.get_running_loop()
    cleaned = anyio.Event()

    async def waits() -> None:
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            cleaned.set()

    task = start(waits(), loop)
    assert task is not None
    task.cancel()  # before the task has run at all
    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert cleaned.is_set()


async def test_a_task_cancelled_while_it_waits() -> None:
    loop = asyncio.get_running_loop()

    async def waits() -> str:
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            return "cancelled"
        return "woken"

    task = start(waits(), loop)
    assert task is not None
    await asyncio.sleep(0)  # it waits already: start() ran its first step
    task.cancel()
    with anyio.fail_after(5):
        assert await task == "cancelled"


# -- the version guard and its fallback ------------------------------------------------------


def test_the_guard_picks_the_eager_start_on_this_python() -> None:
    # The CI Pythons are 3.11 (the shim, TESTED_SHIM) and 3.12+ (asyncio's own).
    assert _eager.start is _eager.eager_start


def test_no_internals_picks_plain_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATSMESH_NO_INTERNALS", "1")
    assert _eager._choose() is _eager.plain_start


@pytest.mark.parametrize("begin", [_eager.eager_start, _eager.plain_start])
async def test_either_start_runs_the_coroutine_to_its_end_in_one_task(begin: Any) -> None:
    loop = asyncio.get_running_loop()
    tasks: list[object] = []

    async def waits() -> str:
        seen.set("mine")
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0)  # a bare yield: the wait that needs a task
        tasks.append(asyncio.current_task())
        return seen.get()

    task = begin(waits(), loop)
    assert task is not None
    assert await task == "mine"
    assert tasks == [task, task]
    assert seen.get() == "unset"


async def test_a_plain_start_keeps_a_failure_in_its_task() -> None:
    async def fails() -> None:
        raise ValueError("in the first step")

    task = _eager.plain_start(fails(), asyncio.get_running_loop())
    assert task is not None
    with pytest.raises(ValueError, match="first step"):
        await task
