"""Running the chaos scenarios: several at once, each in a process of its own, and one table.

A test names its scenario with ``@pytest.mark.chaos("name")``. The first chaos
test to run starts every selected scenario's runner (``python -m chaos.runner``),
``--chaos-jobs`` at a time (the soak alone: it keeps both cores busy), and each
test waits for its own scenario's figures and asserts on them. Every runner is
started from pytest's main thread with ``PR_SET_PDEATHSIG``, so a killed pytest
takes the runners, and their processes, with it; the session's end stops any
runner still going, by pid.

At the end of the run, the figures of every scenario that ran are printed in one
table (``pytest_terminal_summary``).
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.figures import Figures, table
from chaos.procs import ROOT, TESTS, die_with_parent

#: The order to start scenarios in (longest first) and what share of the machine each takes.
WEIGHTS = {
    "soak": 99,  # alone: it keeps both cores busy
    "overload": 99,  # alone: its figures are the service's, not a starved gateway's
    "lame-duck": 1,
    "partition": 1,
    "rolling-restart": 1,
    "supercluster": 1,
    "kv-leader-kill": 1,
    "leaf-site": 1,
    "slow-consumer": 1,
    "sigstop-p2c": 1,
    "sigstop-queue": 1,
    "controller-kill": 1,
}
#: Seconds a scenario may run before it is stopped (without --chaos-long).
MAX_SECONDS = 300
FIGURES = pytest.StashKey[list[tuple[Figures, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos(name): the chaos scenario the test asserts on")
    config.stash[FIGURES] = []


@dataclass
class Run:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    log: Path
    started: float
    code: int | None = None
    cpu: float = 0.0  # seconds of CPU, the runner and every process it started


class Chaos:
    """The scenario runners of this session; see the module docstring."""

    def __init__(self, names: list[str], home: Path, *, jobs: int, long: bool) -> None:
        self.queue = sorted(set(names), key=lambda n: -WEIGHTS.get(n, 1))
        self.home = home
        self.jobs = jobs
        self.long = long
        self.runs: dict[str, Run] = {}
        self.pump()

    def _load(self) -> int:
        return sum(
            min(self.jobs, WEIGHTS.get(r.name, 1)) for r in self.runs.values() if r.code is None
        )

    def pump(self) -> None:
        """Reap runners that ended; start queued ones while there is room."""
        for run in self.runs.values():
            if run.code is None:
                pid, status, usage = os.wait4(run.popen.pid, os.WNOHANG)
                if pid:
                    run.code = os.waitstatus_to_exitcode(status)
                    run.popen.returncode = run.code
                    run.cpu = usage.ru_utime + usage.ru_stime
                elif time.monotonic() - run.started > MAX_SECONDS * (6 if self.long else 1):
                    run.popen.send_signal(signal.SIGTERM)  # the runner tears its lab down
        while (
            self.queue and self._load() + min(self.jobs, WEIGHTS.get(self.queue[0], 1)) <= self.jobs
        ):
            self._start(self.queue.pop(0))
        if self.queue and not self._load():
            self._start(self.queue.pop(0))

    def _until_one_ends(self) -> None:
        """Until a running runner ends (its pidfd turns readable) or one's time limit is due."""
        running = [r for r in self.runs.values() if r.code is None]
        if not running:
            return
        limit = MAX_SECONDS * (6 if self.long else 1)
        due = min(r.started for r in running) + limit - time.monotonic()
        fds = [os.pidfd_open(r.popen.pid) for r in running]
        try:
            # The 0.1 s past the limit: pump() then finds it due and sends the SIGTERM.
            select.select(fds, [], [], max(0.0, due) + 0.1)
        finally:
            for fd in fds:
                os.close(fd)

    def _start(self, name: str) -> None:
        out, log = self.home / f"{name}.json", self.home / f"{name}.log"
        argv = [sys.executable, "-m", "chaos.runner", name, str(out)]
        if self.long:
            argv.append("--long")
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(TESTS)},
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # SIGTERM, not SIGKILL: the runner then kills its own processes by pid.
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            )
        self.runs[name] = Run(name, popen, out, log, time.monotonic())

    def figures(self, name: str) -> Figures:
        """Wait for ``name``'s runner; its figures, or a test failure with its log."""
        if name not in self.runs and name in self.queue:
            self.queue.remove(name)
            self.queue.insert(0, name)
        while name not in self.runs or self.runs[name].code is None:
            self.pump()
            self._until_one_ends()
        self.pump()
        run = self.runs[name]
        if run.code != 0 or not run.out.exists():
            tail = run.log.read_text(errors="replace")[-6000:]
            pytest.fail(f"scenario {name} ended with {run.code}:\n{tail}", pytrace=False)
        figures = Figures.from_json(run.out.read_text())
        figures.notes["cpu s"] = round(run.cpu, 1)
        return figures

    def close(self) -> None:
        for run in self.runs.values():
            if run.code is None:
                run.popen.send_signal(signal.SIGTERM)
        for run in self.runs.values():
            if run.code is None:
                try:
                    run.popen.wait(30)
                except subprocess.TimeoutExpired:
                    run.popen.kill()
                    run.popen.wait()


@pytest.fixture(scope="session")
def chaos_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chaos]:
    names = [
        marker.args[0]
        for item in request.session.items
        if (marker := item.get_closest_marker("chaos")) is not None
    ]
    runs = Chaos(
        names,
        tmp_path_factory.mktemp("chaos"),
        jobs=request.config.getoption("chaos_jobs"),
        long=request.config.getoption("chaos_long"),
    )
    try:
        yield runs
    finally:
        runs.close()


@pytest.fixture
def figures(request: pytest.FixtureRequest, chaos_runs: Chaos) -> Figures:
    """The figures of the test's scenario (``@pytest.mark.chaos("name")``), once it has run."""
    marker = request.node.get_closest_marker("chaos")
    assert marker is not None, "a chaos test names its scenario: @pytest.mark.chaos(name)"
    found = chaos_runs.figures(marker.args[0])
    if found.skipped:
        pytest.skip(found.skipped)
    request.node.stash[_OWN] = found
    return found


_OWN = pytest.StashKey[Figures]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    found = item.stash.get(_OWN, None)
    if found is not None and report.when == "call":  # type: ignore[attr-defined]
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome  # type: ignore[attr-defined]
        item.config.stash[FIGURES].append((found, outcome))
    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    rows = config.stash.get(FIGURES, [])
    if not rows:
        return
    terminalreporter.section("chaos figures")
    for line in table(rows):
        terminalreporter.write_line(line)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    terminalreporter.write_line(
        f"  (gap: longest time without a successful reply; p99 of the calls started during"
        f" the fault; converge: a route change applied by every client; CPU of this run's"
        f" children {usage.ru_utime + usage.ru_stime:.0f} s)"
    )
