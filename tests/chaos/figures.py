"""What a scenario measured, as it travels from the runner to the test and into the table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos.load import Load, Sample, p99


@dataclass
class Figures:
    """One scenario's figures; times in seconds, memory in bytes."""

    scenario: str
    sent: int = 0
    failed: int = 0
    longest_gap: float = 0.0  # without a successful reply (the worst client)
    p99_fault: float = 0.0  # of the calls started during the fault
    converge: float | None = None  # a route change applied by every client
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)  # role: (before, after)
    notes: dict[str, Any] = field(default_factory=dict)  # the scenario's own figures
    errors: list[str] = field(default_factory=list)  # the first distinct failures
    skipped: str = ""
    seconds: float = 0.0  # the scenario's wall time

    def add(self, loads: list[Load], *, fault: tuple[float, float], since: float) -> None:
        """Count the calls of ``loads`` started from ``since`` (the end of the warm-up: what
        failed while the mesh was still starting is noted apart); the fault window is
        (start, end); all in monotonic time."""
        debug = os.environ.get("CHAOS_DEBUG")
        for load in loads:
            if debug:
                load.dump(f"{debug}/{self.scenario}-{load.name}.samples")
            self.sent += len(load.window(since))
            failures = load.failures(since)
            self.failed += len(failures)
            self.longest_gap = max(self.longest_gap, load.longest_gap(since))
            for f in failures:
                text = f"{load.name}: {f.served}"
                if text not in self.errors and len(self.errors) < 10:
                    self.errors.append(text)
            early = load.failures(0.0, since)
            if early:
                key = "failed in warm-up"
                self.notes[key] = self.notes.get(key, 0) + len(early)
        during: list[Sample] = [s for load in loads for s in load.window(*fault)]
        self.p99_fault = max(self.p99_fault, p99(during))

    def rss_growth(self) -> float:
        """The largest relative growth of one process (0.05: 5 %)."""
        return max(((a - b) / b for b, a in self.rss.values() if b), default=0.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Figures:
        data = json.loads(text)
        data["rss"] = {k: tuple(v) for k, v in data["rss"].items()}
        return cls(**data)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}" if seconds < 10 else f"{seconds:.1f} s"


def table(rows: list[tuple[Figures, str]]) -> list[str]:
    """The suite's table: a line per scenario (its tests' outcomes), then notes and memory."""
    merged: dict[str, tuple[Figures, list[str]]] = {}
    for f, outcome in rows:
        merged.setdefault(f.scenario, (f, []))[1].append(outcome)
    head = (
        "scenario",
        "tests",
        "sent",
        "failed",
        "gap ms",
        "p99 fault ms",
        "converge ms",
        "rss MiB before>after (max growth)",
        "wall s",
    )
    lines = [head]
    for f, outcomes in merged.values():
        tests = "+".join(outcomes)
        if f.skipped:
            lines.append((f.scenario, tests, "", "", "", "", "", f.skipped[:60], ""))
            continue
        before = sum(b for b, _ in f.rss.values()) / 2**20
        after = sum(a for _, a in f.rss.values()) / 2**20
        lines.append(
            (
                f.scenario,
                tests,
                str(f.sent),
                str(f.failed),
                _ms(f.longest_gap),
                _ms(f.p99_fault),
                _ms(f.converge),
                f"{before:.0f}>{after:.0f} ({f.rss_growth():+.1%})",
                f"{f.seconds:.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(ln, widths, strict=True)).rstrip() for ln in lines]
    for f, _ in merged.values():
        if f.notes:
            out.append(
                f"  {f.scenario}: " + ", ".join(f"{k} {_note(v)}" for k, v in f.notes.items())
            )
    for f, _ in merged.values():
        if f.rss:
            procs = ", ".join(
                f"{role} {b / 2**20:.0f}>{a / 2**20:.0f}" for role, (b, a) in sorted(f.rss.items())
            )
            out.append(f"  {f.scenario} rss MiB: {procs}")
    return out


def _note(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    text = str(value)
    return text if len(text) <= 100 else text[:97] + "..."
