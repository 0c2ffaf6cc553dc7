"""Every Python snippet of the README runs as written, each on its own imports.

The first snippet is the user's ``mymodule.py``; it is served the way the README
says, ``natsmesh serve mymodule:Pricing`` from its folder (the installed script,
not ``python -m``). The others run as async code in a namespace of their own (as
``python -m asyncio`` would run them), so a snippet that uses a name it does not
import fails. The only change made to them: the README's server URL becomes the
test server's.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from procs import Proc

from examples.shop.catalog import Catalog
from natsmesh import ServiceRunner

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "nats://127.0.0.1:4222"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


async def run_snippet(source: str, name: str) -> dict[str, Any]:
    code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    result = eval(code, namespace)  # noqa: S307 - the README's own snippets, by design
    if result is not None:
        await result
    return namespace


def test_the_readme_has_the_snippets_this_test_expects() -> None:
    snippets = python_snippets()
    assert len(snippets) == 4
    assert "class Pricing" in snippets[0]
    assert README_URL in snippets[1]


async def test_every_python_snippet_runs(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, *others = python_snippets()
    (tmp_path / "mymodule.py").write_text(first)
    monkeypatch.syspath_prepend(str(tmp_path))  # for the snippets' `from mymodule import`
    monkeypatch.delitem(sys.modules, "mymodule", raising=False)
    async with ServiceRunner(Catalog(), nats=nats_url):  # what Pricing calls
        with Proc(
            "serve", "mymodule:Pricing", nats_url=nats_url, cwd=tmp_path, console_script=True
        ) as proc:
            assert "pricing/" in await anyio.to_thread.run_sync(proc.wait_ready)
            for i, snippet in enumerate(others, start=2):
                namespace = await run_snippet(
                    snippet.replace(README_URL, nats_url), f"README.md python snippet {i}"
                )
                if "quote" in namespace:
                    assert namespace["quote"].total_cents == 2400  # catalog's product 1
            assert await anyio.to_thread.run_sync(proc.terminate) == 0
