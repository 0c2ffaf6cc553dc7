"""Real service processes for tests: start, wait for the ready line, signal by pid, reap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio.to_thread

TESTS = Path(__file__).parent


class Proc:
    """A ``python -m natsmesh ...`` child whose stdout announces readiness in one line."""

    def __init__(
        self, *args: str, nats_url: str, cwd: Path | None = None, console_script: bool = False
    ) -> None:
        """``console_script``: run the installed ``natsmesh`` script as a user does (``-m``
        puts the working directory on the import path; the script does not)."""
        env = {**os.environ, "NATS_URL": nats_url, "PYTHONPATH": str(TESTS)}
        if console_script:
            command = [str(Path(sys.executable).parent / "natsmesh"), *args]
            env.pop("PYTHONPATH")
        else:
            command = [sys.executable, "-m", "natsmesh", *args]
        self.popen = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.pid = self.popen.pid
        self._ready = threading.Event()
        self.ready_line = ""
        self.stderr_lines: list[str] = []
        self._stderr_grew = threading.Condition()
        self._stderr_closed = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if not self._ready.is_set():
                self.ready_line = line.strip()
                self._ready.set()
        self._ready.set()

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            with self._stderr_grew:
                self.stderr_lines.append(line)
                self._stderr_grew.notify_all()
        with self._stderr_grew:
            self._stderr_closed = True
            self._stderr_grew.notify_all()

    def wait_ready(self, timeout: float = 20) -> str:
        if not self._ready.wait(timeout) or not self.ready_line:
            self.kill()
            raise RuntimeError(
                f"process {self.pid} not ready: {''.join(self.stderr_lines)[-2000:]}"
            )
        return self.ready_line

    def wait_stderr(self, needle: str, count: int = 1, timeout: float = 20) -> list[str]:
        """The stderr lines holding ``needle``, once there are ``count`` of them.

        Woken by each line the reader thread appends; fails if the bound runs out or
        stderr closes (the process ended) with fewer.
        """

        def found() -> list[str]:
            return [x for x in self.stderr_lines if needle in x]

        with self._stderr_grew:
            self._stderr_grew.wait_for(
                lambda: len(found()) >= count or self._stderr_closed, timeout
            )
            lines = found()
        if len(lines) < count:
            raise TimeoutError(
                f"{len(lines)} of {count} stderr lines with {needle!r} from process {self.pid}:"
                f" {''.join(self.stderr_lines)[-2000:]}"
            )
        return lines

    async def says(self, needle: str, count: int = 1, *, within: float = 20) -> list[str]:
        """``wait_stderr`` for async code: the wait runs in a worker thread."""
        return await anyio.to_thread.run_sync(lambda: self.wait_stderr(needle, count, within))

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill if still running, reap, and close the pipes."""
        self.kill()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
