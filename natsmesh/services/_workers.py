"""``natsmesh serve --workers N``: N worker processes under one supervisor.

Each worker is ``python -m natsmesh serve TARGET [--instances K]`` with its own
NATS connections and instances, so a crash or a ``kill -9`` takes one worker's
instances, and a handler that hogs its event loop stalls only its own. The
supervisor (the process the user started):

- starts the workers and prints one ready line once every worker has printed its own;
- restarts a worker that dies, after a delay that doubles (0.5 s up to 30 s) while
  it keeps dying within 10 s of its start, so a crash loop does not spin; a worker
  that fails before it was ever ready, at startup, stops the whole command instead
  (a bad target or option would fail the same way again);
- on SIGINT or SIGTERM sends SIGTERM to every worker, which drains (no new
  requests, those in flight finish), waits for them, and exits 0 when all did.

Workers run in their own session (a terminal's Ctrl-C reaches the supervisor
only, which stops them in order) and die with the supervisor: each asks Linux
for SIGTERM when its parent dies (:func:`bind_to_supervisor`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["READY_PREFIX", "WORKER_ENV", "Supervisor", "Worker", "bind_to_supervisor"]

log = logging.getLogger("natsmesh.workers")

#: Set in a worker's environment: the supervisor's pid.
WORKER_ENV: Final = "NATSMESH_WORKER_OF"
#: How ``natsmesh serve`` starts its ready line; the rest lists the instances.
READY_PREFIX: Final = b"natsmesh serve: "
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 30.0
STABLE_AFTER: Final = 10.0  # a worker that lived this long was not crash-looping
STOP_WITHIN: Final = 45.0  # a worker's drain (30 s by default), plus its exit
_MAX_LINE: Final = 64 * 1024


@dataclass
class Worker:
    """One worker slot: the process in it now, and how it has fared."""

    index: int
    pid: int = 0
    ready_line: str = ""  # what the worker printed when ready (its instances)
    starts: int = 0
    backoff: float = 0.0
    process: anyio.abc.Process | None = field(default=None, repr=False)


class Supervisor:
    """Runs ``argv`` (natsmesh's own arguments) as ``workers`` processes until a signal."""

    def __init__(
        self, argv: Sequence[str], *, workers: int, env: Mapping[str, str] | None = None
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._command = [sys.executable, "-m", "natsmesh", *argv]
        self._env = {**os.environ, **(env or {}), WORKER_ENV: str(os.getpid())}
        self.workers = [Worker(i + 1) for i in range(workers)]
        self._stop = anyio.Event()
        self._all_ready = anyio.Event()
        self._failure = ""
        self._codes: list[int] = []

    async def run(self, ready: Callable[[list[Worker]], None]) -> int:
        """Supervise until SIGINT or SIGTERM; the exit code (0: every worker drained cleanly)."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._until_signal, signals)
                tg.start_soon(self._announce, ready)
                async with anyio.create_task_group() as slots:
                    for worker in self.workers:
                        slots.start_soon(self._keep, worker)
                    await self._stop.wait()
                    self._signal(signal.SIGTERM)
                    tg.start_soon(self._kill_after, STOP_WITHIN)
                tg.cancel_scope.cancel()
        if self._failure:
            print(f"natsmesh: {self._failure}", file=sys.stderr)
            return 1
        return 0 if all(code == 0 for code in self._codes) else 1

    async def _until_signal(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self._stop.is_set():
                log.warning("%s again: killing the workers", signal.Signals(signum).name)
                self._signal(signal.SIGKILL)
            else:
                log.info("%s: stopping the workers", signal.Signals(signum).name)
                self._stop.set()

    async def _announce(self, ready: Callable[[list[Worker]], None]) -> None:
        await self._all_ready.wait()
        if not self._stop.is_set():
            ready(self.workers)

    async def _kill_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        for worker in self.workers:
            if worker.process is not None:
                log.warning("worker %d (pid %d) did not stop: killing it", worker.index, worker.pid)
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signum)

    async def _keep(self, worker: Worker) -> None:
        """Run a worker in this slot, again and again, until the supervisor stops."""
        while not self._stop.is_set():
            started = time.monotonic()
            process = await anyio.open_process(
                self._command, stdin=subprocess.DEVNULL, stderr=None, env=self._env,
                start_new_session=True,
            )  # fmt: skip
            worker.process, worker.pid, worker.ready_line = process, process.pid, ""
            worker.starts += 1
            if self._stop.is_set():  # stopped while it was being started: it drains too
                process.send_signal(signal.SIGTERM)
            async with process:
                await self._watch(worker, process)
                code = await process.wait()
            worker.process = None
            if self._stop.is_set():
                self._codes.append(code)
                return
            if not self._all_ready.is_set() and not worker.ready_line:
                self._failure = (
                    f"worker {worker.index} {_exit(code)} before it was ready: see its output above"
                )
                self._stop.set()
                return
            young = time.monotonic() - started < STABLE_AFTER
            worker.backoff = min(worker.backoff * 2, MAX_BACKOFF) if young else 0.0
            worker.backoff = worker.backoff or FIRST_BACKOFF
            log.warning(
                "worker %d (pid %d) %s; starting another in %.1f s",
                worker.index, worker.pid, _exit(code), worker.backoff,
            )  # fmt: skip
            with anyio.move_on_after(worker.backoff):
                await self._stop.wait()

    async def _watch(self, worker: Worker, process: anyio.abc.Process) -> None:
        """Wait for the worker's ready line, passing the rest of its output on."""
        assert process.stdout is not None
        stream = BufferedByteReceiveStream(process.stdout)
        out = sys.stdout.buffer
        # Before the ready line: whatever the target module prints when imported.
        while not worker.ready_line:
            try:
                line = await stream.receive_until(b"\n", _MAX_LINE)
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return
            except anyio.DelimiterNotFound:
                break
            if line.startswith(READY_PREFIX):
                worker.ready_line = line[len(READY_PREFIX) :].decode(errors="replace").strip()
            else:
                _write(out, line + b"\n")
        if worker.ready_line:
            if worker.starts > 1:
                log.warning("worker %d is back: pid %d", worker.index, worker.pid)
            if all(w.ready_line for w in self.workers):
                self._all_ready.set()
        # Then a handler's own prints, passed on so that the worker never blocks on a full pipe.
        while True:
            try:
                _write(out, await stream.receive())
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return


def _write(out: BinaryIO, data: bytes) -> None:
    try:
        out.write(data)
        out.flush()
    except (BrokenPipeError, ValueError):
        pass  # nobody reads our output any more: the worker's is dropped, not blocked


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def bind_to_supervisor() -> None:
    """In a worker: die (SIGTERM, so it drains) with the supervisor that started it.

    Does nothing outside a worker. The variable is removed, so that processes this
    worker starts are not taken for workers.
    """
    supervisor = os.environ.pop(WORKER_ENV, None)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG
    if os.getppid() != int(supervisor):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
