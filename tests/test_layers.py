"""One public surface, and the examples and the gateway use it.

The layering itself (pure layers import no I/O, only the transport imports nats, nothing
imports the CLI) is import-linter's contracts in pyproject.toml, run by .ci/run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import natsmesh

ROOT = Path(__file__).parent.parent
PUBLIC_MODULES = {"natsmesh.config", "natsmesh.testing"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_public_surface_is_explicit() -> None:
    public = {n for n in dir(natsmesh) if n.isidentifier() and not n.startswith("_")}
    # Submodules show up as attributes once imported; only the API may be public.
    modules = {"testing", "config"} | {p.parent.name for p in _subpackages()}
    assert public - modules == set(natsmesh.__all__) - {"__version__"}
    for name in natsmesh.__all__:
        assert getattr(natsmesh, name) is not None
    assert all(p.name.startswith("_") or p.stem in modules for p in _package_modules())


def _package_modules() -> list[Path]:
    return [p for p in (ROOT / "natsmesh").glob("*.py") if p.name != "__init__.py"]


def _subpackages() -> list[Path]:
    return list((ROOT / "natsmesh").glob("*/__init__.py"))


def test_every_module_of_a_subpackage_is_private() -> None:
    for package in _subpackages():
        for path in package.parent.glob("*.py"):
            assert path.name == "__init__.py" or path.name.startswith("_"), path


@pytest.mark.parametrize("package", ["examples", "gateway"])
def test_examples_and_the_gateway_use_only_the_public_api(package: str) -> None:
    paths = list((ROOT / package).rglob("*.py"))
    assert paths
    for path in paths:
        for name in _imports(path):
            private = name.startswith("natsmesh.") and name not in PUBLIC_MODULES
            assert not private, f"{path} imports {name}"


MODULE_LINES = 400
FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted([*(ROOT / "natsmesh").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")])


def test_modules_and_functions_stay_small() -> None:
    # STYLE.md: small modules with one job, small functions. A limit a reviewer would
    # otherwise count by hand.
    too_big = []
    for path in _sources():
        source = path.read_text()
        if source.count("\n") > MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LINES:
                    where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                    too_big.append(f"{where}: {length} lines")
    assert not too_big, "\n".join(too_big)
