"""Run service instances until SIGINT or SIGTERM, then drain them.

The shape every long-running natsmesh process shares (``natsmesh serve``,
``natsmesh up``, the examples): start every instance in a task of its own,
signal readiness, wait for a signal, and let every instance drain before it exits.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from natsmesh.services._runtime import ServiceRunner
from natsmesh.services._spec import spec_of
from natsmesh.transport._transport import nats_url
from natsmesh.wire._errors import SpecError

log = logging.getLogger("natsmesh")


def load_target(ref: str) -> list[object]:
    """Import ``module:attr`` and return the @service classes or instances it names.

    ``attr`` may be one service (class or instance) or a list or tuple of them.
    The working directory is searched first, as ``python -m`` (and uvicorn and
    gunicorn) do, so ``natsmesh serve greeter:Greeter`` finds ./greeter.py.
    Raises SpecError with a message fit for a command line.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"expected MODULE:ATTR, got {ref!r}")
    _import_from_cwd()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the module's own error: what and where, in one line
        log.debug("importing %s failed", module_name, exc_info=True)
        raise SpecError(f"cannot import {module_name!r}: {_where(exc)}") from None
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise SpecError(f"{module_name!r} has no attribute {attr!r}") from None
    targets = list(value) if isinstance(value, list | tuple) else [value]
    for target in targets:
        spec_of(target)
    return targets


def _where(exc: Exception) -> str:
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    last = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{last}"


def _import_from_cwd() -> None:
    # An installed console script has its own directory first on sys.path, not the
    # working directory that `python -m` would put there.
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) for entry in sys.path):
        sys.path.insert(0, cwd)


async def serve(
    targets: Sequence[object],
    *,
    nats: str | None = None,
    instances: int = 1,
    prefix: str = "mesh",
    ready: Callable[[list[ServiceRunner]], Awaitable[None] | None] | None = None,
) -> None:
    """Run ``instances`` instances of every target until SIGINT or SIGTERM, then drain.

    A class is instantiated once per instance; an instance object is shared.
    ``nats`` defaults to ``NATS_URL``, then ``nats://127.0.0.1:4222``. ``ready`` is
    called with the runners once all of them are subscribed. Each instance runs
    in a task of its own, so on the way out they drain side by side.
    """
    if instances < 1:
        raise ValueError("instances must be at least 1")
    url = nats_url(nats)
    # Listen first: a signal that arrives while instances start must drain them too,
    # not kill the process with the default handler; and it must stop a start that
    # waits for a server that is not there (the first connection is tried until it works).
    stopped = anyio.Event()
    starting = anyio.CancelScope()
    failure: Exception | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            watching: anyio.CancelScope = await tg.start(_watch, signals, stopped, starting)
            try:
                runners: list[ServiceRunner] = []
                with starting:
                    for target in targets:
                        for _ in range(instances):
                            runners.append(await tg.start(_instance, target, url, prefix, stopped))
                if not starting.cancelled_caught:
                    if ready is not None:
                        result = ready(runners)
                        if result is not None:
                            await result
                    await stopped.wait()
            except Exception as exc:  # raised below, once the instances started have drained
                failure = exc
            finally:
                # Each instance drains in its own task, outside any cancelled scope.
                stopped.set()
                watching.cancel()
    if failure is not None:
        raise failure


async def _watch(
    signals: AsyncIterator[signal.Signals],
    stopped: anyio.Event,
    starting: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope],
) -> None:
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        async for _ in signals:
            stopped.set()
            starting.cancel()
            return


async def _instance(
    target: object,
    url: str,
    prefix: str,
    stopped: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[ServiceRunner],
) -> None:
    """One instance: started (ready once subscribed), then serving until ``stopped``."""
    async with ServiceRunner(target, nats=url, prefix=prefix) as runner:
        task_status.started(runner)
        await stopped.wait()


async def wait_for_signal(ready: Callable[[], None] | None = None) -> int:
    """Return the first SIGINT or SIGTERM received (instead of dying of it).

    ``ready`` (the ready line, say) runs once the handlers are in place: a supervisor
    that stops the process as soon as it reads the line must not kill it instead.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        if ready is not None:
            ready()
        async for signum in signals:
            return int(signum)
    raise AssertionError("unreachable: the signal receiver never ends")
