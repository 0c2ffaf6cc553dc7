"""Run one chaos scenario in a process of its own: ``python -m chaos.runner NAME OUT [--long]``.

The scenario gets a :class:`~chaos.lab.Lab` in a fresh directory and returns its
:class:`~chaos.figures.Figures`, written to OUT as JSON; the test asserts on them.
A crash writes nothing and exits 1 with the traceback on stderr. SIGTERM (the
suite's timeout, a killed pytest by PR_SET_PDEATHSIG) cancels the scenario, so the
lab's teardown still kills every process by pid.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from chaos.figures import Figures
from chaos.lab import Lab
from chaos.netns import Unavailable

Scenario = Callable[[Lab], Awaitable[Figures]]


def scenarios() -> dict[str, Scenario]:
    from chaos import scenarios_cluster, scenarios_load, scenarios_zones

    found: dict[str, Scenario] = {}
    for module in (scenarios_cluster, scenarios_zones, scenarios_load):
        found.update(module.SCENARIOS)
    return found


async def _run(name: str, out: Path, home: Path, long: bool) -> None:
    scenario = scenarios()[name]
    started = time.monotonic()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:

            async def cancel_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(cancel_on_signal)
            try:
                async with Lab(home, long=long) as lab:
                    figures = await scenario(lab)
                    if lab.status_answers > 1:
                        figures.notes["controllers answering status"] = lab.status_answers
            except Unavailable as exc:
                figures = Figures(name, skipped=str(exc))
            figures.seconds = time.monotonic() - started
            await anyio.Path(out).write_text(figures.to_json())
            tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("out", type=Path)
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix=f"chaos-{args.name}-") as tmp:
        home = args.home or Path(tmp)
        anyio.run(_run, args.name, args.out, home, args.long)
    sys.exit(0)


if __name__ == "__main__":
    main()
