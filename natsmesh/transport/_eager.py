"""Run a coroutine at once, inside the caller's step, and give it a task only if it waits.

The service's request path wants Python 3.12's eager tasks, on 3.11 too. Most
handlers finish without ever waiting (validate, compute, reply: a publish only
buffers), and for them a task is overhead: creating and registering it,
scheduling its first step for a later turn of the event loop, and that turn
before the reply leaves. :func:`start` drives the coroutine's first step right
away; one that finishes needs nothing more, one that waits continues in a task.

How, by Python version (the README's table "Private internals we rely on"):

- 3.12 and later: asyncio's public ``eager_task_factory``.
- 3.11 (``TESTED_SHIM``): a shim on asyncio's private task switch (``_enter_task``,
  ``_leave_task``, ``_current_tasks``), ``Task._must_cancel``, and
  ``Future.__init__`` run on a Task before ``Task.__init__``. While the first step
  runs, ``asyncio.current_task()`` is already the task the coroutine continues in,
  so what captures the current task before the first wait (anyio cancel scopes and
  task groups, ``asyncio.timeout``, ``to_thread``) finds the same task after it; and
  the step runs in a copy of the caller's context, as a task's would.
- Anything else (another 3.11 build without those names, ``NATSMESH_NO_INTERNALS=1``):
  :func:`plain_start`, a plain task, whose first step runs on the loop's next turn.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Final

__all__ = ["TESTED_SHIM", "eager_start", "plain_start", "start"]

#: The Python versions whose asyncio internals the 3.11 shim was written against.
TESTED_SHIM: Final = ((3, 11),)
_SWITCH: Final = ("_enter_task", "_leave_task", "_current_tasks")

Start = Callable[[Coroutine[Any, Any, Any], asyncio.AbstractEventLoop], "asyncio.Task[Any] | None"]


def plain_start(
    coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[Any] | None:
    """The fallback: ``coro`` in a plain task of ``loop`` (never None: nothing ran yet)."""
    return loop.create_task(coro)


def _start_public(
    coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[Any] | None:
    """Run ``coro`` until it first waits: None if it finished, else the task it continues in.

    An exception that ends the coroutine in its first step propagates to the
    caller (CancelledError too: something in the step cancelled its own task).
    """
    task: asyncio.Task[Any] = asyncio.eager_task_factory(loop, coro)  # type: ignore[attr-defined,unused-ignore]
    if not task.done():
        return task
    task.result()
    return None


def _choose() -> Start:
    if os.environ.get("NATSMESH_NO_INTERNALS", "") not in ("", "0"):
        return plain_start
    if sys.version_info >= (3, 12):
        return _start_public
    if sys.version_info[:2] in TESTED_SHIM and all(hasattr(asyncio.tasks, n) for n in _SWITCH):
        return _start_shim
    return plain_start


# The two halves of asyncio's own task switch, what every task step does
# around ``coro.send`` (getattr: on a Python without them, _choose() never picks the shim).
_enter_task: Any = getattr(asyncio.tasks, "_enter_task", None)
_leave_task: Any = getattr(asyncio.tasks, "_leave_task", None)
_current_tasks: dict[Any, Any] = getattr(asyncio.tasks, "_current_tasks", {})


def _start_shim(
    coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[Any] | None:
    """Run ``coro`` until it first waits: None if it finished, else the task it continues in.

    An exception that ends the coroutine in its first step propagates to the
    caller (CancelledError too: something in the step cancelled its own task).
    """
    task = _Task.__new__(_Task)
    # A pending future, not yet a task: nothing is scheduled or registered
    # until the coroutine waits.
    asyncio.Future.__init__(task, loop=loop)
    task._first_coro = coro
    context = contextvars.copy_context()
    caller = _current_tasks.get(loop)
    if caller is not None:
        _leave_task(loop, caller)
    _enter_task(loop, task)
    try:
        waits_on = context.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        _leave_task(loop, task)
        if caller is not None:
            _enter_task(loop, caller)
    # Task.__init__ forgets a cancel() made while the step ran: it is made again.
    cancel = task._must_cancel  # type: ignore[attr-defined]
    asyncio.Task.__init__(task, _Resumed(coro, waits_on), loop=loop, context=context)
    if cancel:
        task.cancel()
    return task


class _Task(asyncio.Task[Any]):
    """A task that exists, as a pending future, before its coroutine is handed to it."""

    __slots__ = ("_first_coro",)

    _first_coro: Coroutine[Any, Any, Any]

    # Before Task.__init__ the C task has no coroutine (3.11's get_coro() would
    # dereference NULL): answer with the one being run, as a task would.
    def get_coro(self) -> Coroutine[Any, Any, Any]:
        return self._first_coro

    def __repr__(self) -> str:
        if self._coro is None:  # type: ignore[attr-defined]
            return f"<{type(self).__name__} pending coro={self._first_coro!r}>"
        return super().__repr__()


class _Resumed(Coroutine[Any, Any, Any]):
    """A coroutine past its first step, in the shape a task expects.

    The task's first step is handed what the coroutine already waits on (a
    future, or None for a bare yield); every later step, and every exception
    thrown in (a cancellation), goes to the coroutine itself.
    """

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any], waits_on: Any) -> None:
        self._coro = coro
        self._first = waits_on
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._first
        return self._coro.send(value)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
    ) -> Any:
        # Before the task's first step (a task cancelled before it ran) too: it
        # lands where the coroutine waits, as it would have in a task.
        self._started = True
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # type: ignore[arg-type]

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("a resumed coroutine belongs to its task")


#: The eager start this Python offers (3.12's own, or the 3.11 shim): for tests.
eager_start: Final[Start] = _start_public if sys.version_info >= (3, 12) else _start_shim
#: What the service runtime calls: see the module's docstring.
start: Final[Start] = _choose()
