"""Choosing the event loop: uvloop where installed, asyncio on request, and no policy on import."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

from natsmesh.ops import _loop


def test_auto_is_uvloop_where_installed_and_asyncio_on_request() -> None:
    pytest.importorskip("uvloop")  # a dependency wherever it has wheels
    assert _loop.resolve("auto") == "uvloop"
    assert _loop.resolve("uvloop") == "uvloop"
    assert _loop.resolve("asyncio") == "asyncio"
    assert _loop.backend_options("asyncio") == {}
    assert _loop.backend_options("auto") == {"use_uvloop": True}


def test_without_uvloop_auto_falls_back_and_uvloop_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets without it
    assert _loop.resolve("auto") == "asyncio"
    with pytest.raises(_loop.LoopUnavailable, match="--loop uvloop: uvloop is not installed"):
        _loop.resolve("uvloop")
    with pytest.raises(ValueError, match="unknown event loop"):
        _loop.resolve("trio")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_runs_on_the_loop_asked_for(loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")

    async def which(_: None) -> int:
        return 1 if _loop.running().startswith("uvloop") else 0

    assert _loop.run(which, None, loop=loop) == (loop == "uvloop")


def test_importing_the_library_installs_no_loop_policy() -> None:
    # A fresh interpreter: everything a user may import, then asyncio.run() as they would.
    code = (
        "import asyncio, sys\n"
        "import natsmesh, natsmesh.testing, natsmesh.config, gateway\n"
        "import natsmesh.cli._main, natsmesh.bench._gateway\n"
        "async def main():\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "print(type(asyncio.get_event_loop_policy()).__module__, asyncio.run(main()),"
        " 'uvloop' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    policy, loop, imported = done.stdout.split()
    assert policy.startswith("asyncio.")
    assert loop.startswith("asyncio.")
    assert imported == "False"


def test_the_running_loop_is_named() -> None:
    async def main() -> str:
        return _loop.running()

    assert anyio.run(main) == "asyncio"
