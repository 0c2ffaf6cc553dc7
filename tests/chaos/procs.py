"""The processes of a chaos scenario: started, watched, signalled by pid, measured, stopped.

Every process is started from the thread that runs the scenario's event loop, with
``PR_SET_PDEATHSIG`` set to SIGKILL: when the scenario runner dies, however it dies,
the kernel kills its children, so nothing outlives a killed pytest (the runner
itself dies with pytest the same way). Each process's output goes to a log file
and a tail kept in memory; readiness is the process's own line ("Server is ready",
"natsmesh serve: ..."), never a sleep.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
BIN = Path(sys.executable).parent
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child, before exec: the kernel sends ``sig`` when the parent thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without NATS credentials and URLs, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSMESH_"))}
    env["PYTHONPATH"] = str(TESTS)
    env.update(extra)
    return env


def rss_of(pid: int) -> int | None:
    """Resident memory in bytes (None when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


class Proc:
    """One child process; ``ready`` is a regular expression its output matches once ready."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_dir: Path,
        ready: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._ready_re = re.compile(ready) if ready else None
        self.ready_match: re.Match[str] | None = None
        self._ready = threading.Event()
        self._ended = threading.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=400)
        self._watch: list[tuple[re.Pattern[str], list[str]]] = []
        self._lock = threading.Lock()
        self.log_path = log_dir / f"{name}.log"
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C meant for pytest is the runner's to handle
            preexec_fn=die_with_parent,
        )
        self.pid = self.popen.pid
        self.started = time.monotonic()
        threading.Thread(target=self._drain, name=f"{name}-log", daemon=True).start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"# {' '.join(self.argv)} (pid {self.pid})\n")
            for line in self.popen.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                with self._lock:
                    self._tail.append(line)
                    for pattern, found in self._watch:
                        if pattern.search(line):
                            found.append(line)
                if self._ready_re is not None and not self._ready.is_set():
                    match = self._ready_re.search(line)
                    if match:
                        self.ready_match = match
                        self._ready.set()
        self._ended.set()

    def watch(self, pattern: str) -> list[str]:
        """The lines of output from now on that match ``pattern`` (a live list)."""
        found: list[str] = []
        with self._lock:
            self._watch.append((re.compile(pattern), found))
        return found

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            return "\n".join(list(self._tail)[-lines:])

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    async def wait_ready(self, timeout: float = 30.0) -> re.Match[str]:
        """Wait for the ready line; raise with the output's tail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self._ended.is_set() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} (pid {self.pid}) not ready, exit {self.popen.poll()}:\n"
                    + self.tail()
                )
            await anyio.to_thread.run_sync(self._ready.wait, 0.2)
        assert self.ready_match is not None
        return self.ready_match

    def signal(self, sig: int) -> None:
        if self.running:
            os.kill(self.pid, sig)

    def rss(self) -> int | None:
        return rss_of(self.pid) if self.running else None

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await anyio.to_thread.run_sync(self.popen.wait, timeout)
        return None

    async def stop(self, *, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        self.signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        code = await self.wait(grace)
        if code is None:
            self.kill()
            code = self.popen.wait(10)
        return code

    def kill(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
